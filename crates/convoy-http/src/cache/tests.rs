//! The cache as a whole, through its public calls, with a clock of its
//! own.

use super::*;
use bytes::Bytes;
use http::header::HeaderValue;
use http::{response, Method, StatusCode};
use std::sync::atomic::AtomicUsize;
use std::time::{SystemTime, UNIX_EPOCH};

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
}

fn req(method: &str, uri: &str, headers: &[(&str, &str)]) -> request::Parts {
    let mut b = http::Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(()).unwrap().into_parts().0
}

fn get(uri: &str) -> request::Parts {
    req("GET", uri, &[])
}

fn resp(status: u16, headers: &[(&str, &str)]) -> response::Parts {
    let mut b = http::Response::builder().status(status);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(()).unwrap().into_parts().0
}

fn ok(cc: &str) -> response::Parts {
    resp(200, &[("cache-control", cc)])
}

fn cache() -> Cache {
    Cache::new(CacheConfig::default())
}

fn hdr<'a>(parts: &'a response::Parts, name: &str) -> Option<&'a str> {
    parts.headers.get(name).map(|v| v.to_str().unwrap())
}

fn fresh(l: Lookup) -> Cached {
    match l {
        Lookup::Fresh(c) => c,
        other => panic!("expected Fresh, got {other:?}"),
    }
}

fn revalidate(l: Lookup) -> (Cached, request::Parts) {
    match l {
        Lookup::Revalidate(c, r) => (c, r),
        other => panic!("expected Revalidate, got {other:?}"),
    }
}

fn swr(l: Lookup) -> (Cached, request::Parts) {
    match l {
        Lookup::StaleWhileRevalidate(c, r) => (c, r),
        other => panic!("expected StaleWhileRevalidate, got {other:?}"),
    }
}

fn is_miss(l: &Lookup) -> bool {
    matches!(l, Lookup::Miss)
}

#[test]
fn cache_is_send_sync() {
    fn check<T: Send + Sync + 'static>() {}
    check::<Cache>();
    check::<LeadGuard>();
    check::<Waiter>();
    check::<Cached>();
}

#[test]
fn fresh_hit_within_max_age_and_age_grows() {
    let c = cache();
    let r = get("http://example.com/a");
    assert!(is_miss(&c.lookup(&r, at(0))));
    assert!(c.store(&r, &ok("max-age=100"), Bytes::from_static(b"hello"), at(0)));
    let hit = fresh(c.lookup(&r, at(10)));
    assert_eq!(hit.body, "hello");
    assert_eq!(hit.age, Duration::from_secs(10));
    assert_eq!(hdr(&hit.parts, "age"), Some("10"));
    assert_eq!(hdr(&hit.parts, "content-length"), Some("5"));
    assert_eq!(hit.ttl, Duration::from_secs(90));
    assert_eq!(hit.key, "example.com/a");
    let later = fresh(c.lookup(&r, at(60)));
    assert_eq!(hdr(&later.parts, "age"), Some("60"));
    // An upstream Age counts from the start.
    let r2 = get("http://example.com/b");
    let aged = resp(200, &[("cache-control", "max-age=100"), ("age", "30")]);
    assert!(c.store(&r2, &aged, Bytes::from_static(b"x"), at(0)));
    assert_eq!(hdr(&fresh(c.lookup(&r2, at(5))).parts, "age"), Some("35"));
    assert!(!matches!(c.lookup(&r2, at(71)), Lookup::Fresh(_)));
    let s = c.stats();
    assert_eq!((s.hits, s.misses, s.entries), (3, 2, 1));
}

#[test]
fn plain_hits_agree_with_the_policy() {
    // The same lookups answered by the fast path (plain requests) and
    // by the policy (a request with its own Cache-Control that changes
    // nothing): the same age, freshness and variant.
    let c = cache();
    let r = get("http://example.com/v");
    let accept = |lang: &str| {
        let mut r = r.clone();
        r.headers
            .insert("accept-language", HeaderValue::from_str(lang).unwrap());
        r
    };
    let en = accept("en");
    let fr = accept("fr");
    let varied = resp(
        200,
        &[
            ("cache-control", "max-age=100"),
            ("vary", "Accept-Language"),
        ],
    );
    assert!(c.store(&en, &varied, Bytes::from_static(b"hello"), at(0)));
    assert!(c.store(&fr, &varied, Bytes::from_static(b"bonjour"), at(0)));
    for t in [1, 50, 99] {
        for (req, body) in [(&en, "hello"), (&fr, "bonjour")] {
            let plain = fresh(c.lookup(req, at(t)));
            let mut asked = req.clone();
            asked
                .headers
                .insert("cache-control", HeaderValue::from_static("max-stale=0"));
            let policy = fresh(c.lookup(&asked, at(t)));
            assert_eq!(
                (plain.body.clone(), plain.age, plain.ttl),
                (Bytes::from(body), policy.age, policy.ttl)
            );
        }
    }
    // Expired: not a plain hit.
    assert!(!matches!(c.lookup(&en, at(101)), Lookup::Fresh(_)));
    // A variant nobody stored: no hit.
    assert!(!matches!(c.lookup(&accept("de"), at(5)), Lookup::Fresh(_)));
    // A response's no-cache is never a plain hit: it is revalidated.
    let r2 = get("http://example.com/nc");
    let nc = resp(
        200,
        &[
            ("cache-control", "no-cache, max-age=100"),
            ("etag", "\"x\""),
        ],
    );
    assert!(c.store(&r2, &nc, Bytes::from_static(b"x"), at(0)));
    assert!(matches!(c.lookup(&r2, at(1)), Lookup::Revalidate(..)));
}

#[test]
fn miss_after_expiry_without_validator_drops_entry() {
    let c = cache();
    let r = get("http://example.com/a");
    assert!(c.store(&r, &ok("max-age=10"), Bytes::from_static(b"x"), at(0)));
    assert!(matches!(c.lookup(&r, at(9)), Lookup::Fresh(_)));
    assert!(is_miss(&c.lookup(&r, at(10))));
    assert_eq!(c.stats().entries, 0);
    assert_eq!(c.stats().stored_bytes, 0);
}

#[test]
fn expired_with_validator_asks_for_conditional_request() {
    let c = cache();
    let r = req(
        "GET",
        "http://example.com/a",
        &[("if-none-match", "\"client\"")],
    );
    let etag = resp(200, &[("cache-control", "max-age=10"), ("etag", "\"v1\"")]);
    assert!(c.store(&r, &etag, Bytes::from_static(b"x"), at(0)));
    let (stale, cond) = revalidate(c.lookup(&r, at(20)));
    assert_eq!(stale.staleness, Duration::from_secs(10));
    assert_eq!(stale.ttl, Duration::ZERO);
    assert_eq!(cond.headers.get("if-none-match").unwrap(), "\"v1\"");
    assert_eq!(cond.uri, "http://example.com/a");
    assert_eq!(cond.method, Method::GET);

    let r2 = get("http://example.com/lm");
    let lm = "Tue, 14 Nov 2023 22:00:00 GMT";
    let modified = resp(
        200,
        &[("cache-control", "max-age=10"), ("last-modified", lm)],
    );
    assert!(c.store(&r2, &modified, Bytes::from_static(b"y"), at(0)));
    let (_, cond) = revalidate(c.lookup(&r2, at(20)));
    assert_eq!(cond.headers.get("if-modified-since").unwrap(), lm);
    assert!(!cond.headers.contains_key("if-none-match"));
    assert_eq!(c.stats().revalidations, 2);
}

#[test]
fn request_no_cache_and_max_age_zero_force_revalidation() {
    let c = cache();
    let r = get("http://example.com/a");
    let etag = resp(200, &[("cache-control", "max-age=100"), ("etag", "\"v1\"")]);
    assert!(c.store(&r, &etag, Bytes::from_static(b"x"), at(0)));
    for cc in [
        ("cache-control", "no-cache"),
        ("cache-control", "max-age=0"),
        ("pragma", "no-cache"),
    ] {
        let forced = req("GET", "http://example.com/a", &[cc]);
        let (c0, cond) = revalidate(c.lookup(&forced, at(5)));
        assert_eq!(c0.staleness, Duration::ZERO, "{cc:?}");
        assert_eq!(cond.headers.get("if-none-match").unwrap(), "\"v1\"");
    }
    // max-age=10 in the request is satisfied at age 5, not at 20.
    let ma = req(
        "GET",
        "http://example.com/a",
        &[("cache-control", "max-age=10")],
    );
    assert!(matches!(c.lookup(&ma, at(5)), Lookup::Fresh(_)));
    assert!(matches!(c.lookup(&ma, at(20)), Lookup::Revalidate(..)));
    // Even a response without validator is kept while fresh.
    let r2 = get("http://example.com/nv");
    assert!(c.store(&r2, &ok("max-age=100"), Bytes::from_static(b"x"), at(0)));
    let nc = req(
        "GET",
        "http://example.com/nv",
        &[("cache-control", "no-cache")],
    );
    let (_, cond) = revalidate(c.lookup(&nc, at(5)));
    assert!(!cond.headers.contains_key("if-none-match"));
    assert!(matches!(c.lookup(&r2, at(6)), Lookup::Fresh(_)));
}

#[test]
fn not_stored_no_store_private_authorization_and_friends() {
    let c = cache();
    let r = get("http://example.com/a");
    let body = || Bytes::from_static(b"x");
    assert!(!c.store(&r, &ok("no-store, max-age=60"), body(), at(0)));
    assert!(!c.store(&r, &ok("private, max-age=60"), body(), at(0)));
    let no_store_req = req(
        "GET",
        "http://example.com/a",
        &[("cache-control", "no-store")],
    );
    assert!(!c.store(&no_store_req, &ok("max-age=60"), body(), at(0)));
    let post = req("POST", "http://example.com/a", &[]);
    assert!(!c.store(&post, &ok("max-age=60"), body(), at(0)));
    let head = req("HEAD", "http://example.com/a", &[]);
    assert!(!c.store(&head, &ok("max-age=60"), Bytes::new(), at(0)));
    let partial = resp(206, &[("cache-control", "max-age=60")]);
    assert!(!c.store(&r, &partial, body(), at(0)));
    let cookie = resp(
        200,
        &[("cache-control", "max-age=60"), ("set-cookie", "s=1")],
    );
    assert!(!c.store(&r, &cookie, body(), at(0)));
    let vary_star = resp(200, &[("cache-control", "max-age=60"), ("vary", "*")]);
    assert!(!c.store(&r, &vary_star, body(), at(0)));
    let truncated = resp(
        200,
        &[("cache-control", "max-age=60"), ("content-length", "9")],
    );
    assert!(!c.store(&r, &truncated, body(), at(0)));
    // 200 without any freshness info or validator would only ever miss.
    assert!(!c.store(&r, &resp(200, &[]), body(), at(0)));
    // Not cacheable by default and no explicit freshness.
    let found = resp(302, &[("location", "/b")]);
    assert!(!c.store(&r, &found, body(), at(0)));

    let authed = req(
        "GET",
        "http://example.com/a",
        &[("authorization", "Bearer t")],
    );
    assert!(!c.store(&authed, &ok("max-age=60"), body(), at(0)));
    assert_eq!(c.stats().entries, 0);
    assert!(c.store(&authed, &ok("public, max-age=60"), body(), at(0)));
    let hit = fresh(c.lookup(&authed, at(1)));
    assert_eq!(hit.body, "x");
    assert_eq!(c.stats().stores, 1);

    // A response stored for anonymous requests does not answer an
    // authenticated one unless it allows it.
    let r2 = get("http://example.com/anon");
    assert!(c.store(&r2, &ok("max-age=60"), body(), at(0)));
    let authed2 = req(
        "GET",
        "http://example.com/anon",
        &[("authorization", "Basic x")],
    );
    assert!(is_miss(&c.lookup(&authed2, at(1))));
    assert!(matches!(c.lookup(&r2, at(1)), Lookup::Fresh(_)));
    // Set-Cookie with public is the origin's explicit choice.
    let pub_cookie = resp(
        200,
        &[
            ("cache-control", "public, max-age=60"),
            ("set-cookie", "a=b"),
        ],
    );
    assert!(c.store(&get("http://example.com/pc"), &pub_cookie, body(), at(0)));
}

#[test]
fn refused_newer_response_supersedes_stored_variant() {
    let c = Cache::new(CacheConfig {
        max_object_bytes: 100,
        ..CacheConfig::default()
    });
    let r = get("http://example.com/a");
    let etag = resp(200, &[("cache-control", "max-age=60"), ("etag", "\"v1\"")]);
    let put = |c: &Cache| assert!(c.store(&r, &etag, Bytes::from_static(b"x"), at(0)));
    // The origin now says no-store: the old copy must not be served on.
    put(&c);
    assert!(!c.store(&r, &ok("no-store"), Bytes::from_static(b"y"), at(1)));
    assert!(is_miss(&c.lookup(&r, at(2))));
    // Grown past the object limit: same.
    put(&c);
    assert!(!c.store(&r, &ok("max-age=60"), Bytes::from(vec![0; 101]), at(1)));
    assert!(is_miss(&c.lookup(&r, at(2))));
    // A 5xx keeps it (stale-if-error), and so do refusals caused by the
    // client's request.
    put(&c);
    assert!(!c.store(&r, &resp(503, &[]), Bytes::new(), at(1)));
    let authed = req(
        "GET",
        "http://example.com/a",
        &[("authorization", "Bearer t")],
    );
    assert!(!c.store(&authed, &ok("max-age=60"), Bytes::from_static(b"z"), at(1)));
    let no_store = req(
        "GET",
        "http://example.com/a",
        &[("cache-control", "no-store")],
    );
    assert!(!c.store(
        &no_store,
        &ok("max-age=60"),
        Bytes::from_static(b"z"),
        at(1)
    ));
    assert_eq!(fresh(c.lookup(&r, at(2))).body, "x");
    assert_eq!(c.stats().removed, 2);
}

#[test]
fn only_get_and_head_are_looked_up_and_head_uses_get() {
    let c = cache();
    let r = get("http://example.com/a");
    assert!(c.store(&r, &ok("max-age=60"), Bytes::from_static(b"hello"), at(0)));
    assert!(is_miss(
        &c.lookup(&req("POST", "http://example.com/a", &[]), at(1))
    ));
    let head = fresh(c.lookup(&req("HEAD", "http://example.com/a", &[]), at(1)));
    assert!(head.body.is_empty());
    assert_eq!(hdr(&head.parts, "content-length"), Some("5"));
    assert_eq!(head.parts.status, StatusCode::OK);
    // A stale HEAD revalidates with HEAD.
    let etag = resp(200, &[("cache-control", "max-age=10"), ("etag", "\"e\"")]);
    assert!(c.store(&r, &etag, Bytes::from_static(b"hello"), at(0)));
    let (stale, cond) = revalidate(c.lookup(&req("HEAD", "http://example.com/a", &[]), at(20)));
    assert!(stale.body.is_empty());
    assert_eq!(cond.method, Method::HEAD);
    assert_eq!(cond.headers.get("if-none-match").unwrap(), "\"e\"");
}

#[test]
fn key_normalization() {
    let c = cache();
    assert_eq!(
        c.key(&get("http://Example.COM:80/a/b?x=1&y")),
        "example.com/a/b?x=1&y"
    );
    assert_eq!(c.key(&get("https://example.com:443/a")), "example.com/a");
    assert_eq!(
        c.key(&get("http://example.com:8080/a")),
        "example.com:8080/a"
    );
    assert_eq!(c.key(&get("http://example.com")), "example.com/");
    let origin_form = req("GET", "/a/b?x=1&y", &[("host", "EXAMPLE.com")]);
    assert_eq!(c.key(&origin_form), "example.com/a/b?x=1&y");
    // Stored via absolute form, found via origin form + Host, and back.
    assert!(c.store(
        &get("http://example.com/a/b?x=1&y"),
        &ok("max-age=60"),
        Bytes::from_static(b"1"),
        at(0)
    ));
    assert_eq!(fresh(c.lookup(&origin_form, at(1))).body, "1");
    assert!(is_miss(
        &c.lookup(&get("http://example.com/a/b?x=1"), at(1))
    ));
    assert!(is_miss(
        &c.lookup(&get("http://other.com/a/b?x=1&y"), at(1))
    ));
}

#[test]
fn vary_variants_side_by_side() {
    let c = cache();
    let gz = req(
        "GET",
        "http://example.com/app.js",
        &[("accept-encoding", "gzip")],
    );
    let br = req(
        "GET",
        "http://example.com/app.js",
        &[("accept-encoding", "br")],
    );
    let plain = get("http://example.com/app.js");
    let enc = |e: &str| {
        resp(
            200,
            &[
                ("cache-control", "max-age=60"),
                ("vary", "Accept-Encoding"),
                ("content-encoding", e),
            ],
        )
    };
    assert!(c.store(&gz, &enc("gzip"), Bytes::from_static(b"G"), at(0)));
    assert!(c.store(&br, &enc("br"), Bytes::from_static(b"B"), at(0)));
    assert_eq!(c.stats().entries, 2);
    let g = fresh(c.lookup(&gz, at(1)));
    assert_eq!(
        (g.body.as_ref(), hdr(&g.parts, "content-encoding")),
        (&b"G"[..], Some("gzip"))
    );
    let b = fresh(c.lookup(&br, at(1)));
    assert_eq!(
        (b.body.as_ref(), hdr(&b.parts, "content-encoding")),
        (&b"B"[..], Some("br"))
    );
    assert!(is_miss(&c.lookup(&plain, at(1))));
    let deflate = req(
        "GET",
        "http://example.com/app.js",
        &[("accept-encoding", "deflate")],
    );
    assert!(is_miss(&c.lookup(&deflate, at(1))));
    // Storing gzip again replaces its variant only.
    assert!(c.store(&gz, &enc("gzip"), Bytes::from_static(b"G2"), at(2)));
    assert_eq!(c.stats().entries, 2);
    assert_eq!(fresh(c.lookup(&gz, at(3))).body, "G2");
    assert_eq!(fresh(c.lookup(&br, at(3))).body, "B");
    // The identity variant joins them.
    assert!(c.store(&plain, &enc("identity"), Bytes::from_static(b"P"), at(3)));
    assert_eq!(fresh(c.lookup(&plain, at(4))).body, "P");
    assert_eq!(c.stats().entries, 3);
    assert_eq!(c.purge("example.com/app.js"), 3);
}

#[test]
fn revalidation_304_refreshes_and_merges_headers() {
    let c = cache();
    let r = get("http://example.com/a");
    let stored = resp(
        200,
        &[
            ("cache-control", "max-age=10"),
            ("etag", "\"v1\""),
            ("x-old", "1"),
            ("x-both", "old"),
            ("content-type", "text/plain"),
        ],
    );
    assert!(c.store(&r, &stored, Bytes::from_static(b"hello"), at(0)));
    let (_, cond) = revalidate(c.lookup(&r, at(20)));
    assert_eq!(cond.headers.get("if-none-match").unwrap(), "\"v1\"");
    let not_modified = resp(
        304,
        &[
            ("cache-control", "max-age=100"),
            ("etag", "\"v1\""),
            ("x-both", "new"),
            ("x-new", "2"),
            ("content-length", "0"),
            ("connection", "close"),
        ],
    );
    let served = c
        .revalidated(&cond, &not_modified, at(20))
        .expect("refreshed");
    assert_eq!(served.body, "hello");
    assert_eq!(served.parts.status, StatusCode::OK);
    assert_eq!(hdr(&served.parts, "x-old"), Some("1"));
    assert_eq!(hdr(&served.parts, "x-both"), Some("new"));
    assert_eq!(served.parts.headers.get_all("x-both").iter().count(), 1);
    assert_eq!(hdr(&served.parts, "x-new"), Some("2"));
    assert_eq!(hdr(&served.parts, "content-length"), Some("5"));
    assert_eq!(hdr(&served.parts, "content-type"), Some("text/plain"));
    assert_eq!(hdr(&served.parts, "cache-control"), Some("max-age=100"));
    assert!(!served.parts.headers.contains_key("connection"));
    assert_eq!(served.age, Duration::ZERO);
    // Fresh again, with the new lifetime counted from the 304.
    let hit = fresh(c.lookup(&r, at(50)));
    assert_eq!(hdr(&hit.parts, "age"), Some("30"));
    assert_eq!(hit.body, "hello");
    assert!(matches!(c.lookup(&r, at(121)), Lookup::Revalidate(..)));
    let s = c.stats();
    assert_eq!((s.refreshes, s.entries), (1, 1));

    // A 304 about another representation does not touch the entry.
    let other = resp(304, &[("etag", "\"v2\""), ("cache-control", "max-age=999")]);
    assert!(c.revalidated(&cond, &other, at(130)).is_none());
    // A 200 is for store().
    assert!(c.revalidated(&cond, &ok("max-age=5"), at(130)).is_none());
    assert!(matches!(c.lookup(&r, at(130)), Lookup::Revalidate(..)));
    // Nothing stored → nothing refreshed.
    let nothing = get("http://example.com/none");
    assert!(c.revalidated(&nothing, &not_modified, at(130)).is_none());
}

#[test]
fn revalidation_304_with_no_store_serves_once_and_drops() {
    let c = cache();
    let r = get("http://example.com/a");
    let stored = resp(200, &[("cache-control", "max-age=10"), ("etag", "\"v1\"")]);
    assert!(c.store(&r, &stored, Bytes::from_static(b"hello"), at(0)));
    let nm = resp(304, &[("cache-control", "no-store"), ("etag", "\"v1\"")]);
    let served = c.revalidated(&r, &nm, at(20)).expect("served");
    assert_eq!(served.body, "hello");
    assert_eq!(c.stats().entries, 0);
    assert_eq!(c.stats().stored_bytes, 0);
}

#[test]
fn stale_while_revalidate_window() {
    let c = cache();
    let r = get("http://example.com/a");
    let stored = resp(
        200,
        &[
            ("cache-control", "max-age=10, stale-while-revalidate=20"),
            ("etag", "\"v1\""),
        ],
    );
    assert!(c.store(&r, &stored, Bytes::from_static(b"hello"), at(0)));
    assert!(matches!(c.lookup(&r, at(5)), Lookup::Fresh(_)));
    let (stale, cond) = swr(c.lookup(&r, at(15)));
    assert_eq!(stale.body, "hello");
    assert_eq!(stale.staleness, Duration::from_secs(5));
    assert_eq!(hdr(&stale.parts, "age"), Some("15"));
    assert_eq!(cond.headers.get("if-none-match").unwrap(), "\"v1\"");
    swr(c.lookup(&r, at(30)));
    // The client insisting on validation gets no stale copy.
    let nc = req(
        "GET",
        "http://example.com/a",
        &[("cache-control", "no-cache")],
    );
    revalidate(c.lookup(&nc, at(15)));
    // Past the window: revalidate first.
    revalidate(c.lookup(&r, at(31)));
    assert_eq!(c.stats().stale_served, 2);

    // must-revalidate forbids it.
    let r2 = get("http://example.com/mr");
    let mr = resp(
        200,
        &[
            (
                "cache-control",
                "max-age=10, stale-while-revalidate=20, must-revalidate",
            ),
            ("etag", "\"v\""),
        ],
    );
    assert!(c.store(&r2, &mr, Bytes::from_static(b"x"), at(0)));
    revalidate(c.lookup(&r2, at(15)));

    // Without validator the entry is still used within the window and
    // dropped after it.
    let r3 = get("http://example.com/nv");
    assert!(c.store(
        &r3,
        &ok("max-age=10, stale-while-revalidate=20"),
        Bytes::from_static(b"x"),
        at(0)
    ));
    let (_, cond) = swr(c.lookup(&r3, at(25)));
    assert!(!cond.headers.contains_key("if-none-match"));
    assert!(is_miss(&c.lookup(&r3, at(31))));
}

#[test]
fn stale_while_revalidate_default_from_config() {
    let c = Cache::new(CacheConfig {
        stale_while_revalidate_default: Some(Duration::from_secs(30)),
        ..CacheConfig::default()
    });
    let r = get("http://example.com/a");
    let stored = resp(200, &[("cache-control", "max-age=10"), ("etag", "\"v1\"")]);
    assert!(c.store(&r, &stored, Bytes::from_static(b"x"), at(0)));
    swr(c.lookup(&r, at(39)));
    revalidate(c.lookup(&r, at(41)));
    let r2 = get("http://example.com/nc");
    let no_cache = resp(200, &[("cache-control", "no-cache"), ("etag", "\"v1\"")]);
    assert!(c.store(&r2, &no_cache, Bytes::from_static(b"x"), at(0)));
    revalidate(c.lookup(&r2, at(1)));
}

#[test]
fn stale_if_error_window() {
    let c = cache();
    let r = get("http://example.com/a");
    assert!(c.store(
        &r,
        &ok("max-age=10, stale-if-error=60"),
        Bytes::from_static(b"x"),
        at(0)
    ));
    // Fresh copies may be served on error too.
    let hit = fresh(c.lookup(&r, at(5)));
    assert!(c.stale_if_error(&hit, at(5)));
    // No validator, but the window keeps it around: revalidate (a plain
    // request), and serve the stale copy if the origin fails.
    let (stale, cond) = revalidate(c.lookup(&r, at(30)));
    assert!(!cond.headers.contains_key("if-none-match"));
    assert_eq!(stale.staleness, Duration::from_secs(20));
    assert!(c.stale_if_error(&stale, at(30)));
    assert!(c.stale_if_error(&stale, at(70)));
    assert!(!c.stale_if_error(&stale, at(71)));
    assert_eq!(c.stats().stale_served, 3);
    // Past the window nothing is left to do with it.
    assert!(is_miss(&c.lookup(&r, at(71))));
    assert_eq!(c.stats().entries, 0);

    // Without the directive: never.
    let r2 = get("http://example.com/b");
    let etag = resp(200, &[("cache-control", "max-age=10"), ("etag", "\"v\"")]);
    assert!(c.store(&r2, &etag, Bytes::from_static(b"x"), at(0)));
    let (stale, _) = revalidate(c.lookup(&r2, at(11)));
    assert!(!c.stale_if_error(&stale, at(11)));
}

#[test]
fn max_object_size_and_budget() {
    let c = Cache::new(CacheConfig {
        max_object_bytes: 10,
        ..CacheConfig::default()
    });
    let r = get("http://example.com/a");
    assert!(!c.store(&r, &ok("max-age=60"), Bytes::from(vec![b'x'; 11]), at(0)));
    assert!(c.store(&r, &ok("max-age=60"), Bytes::from(vec![b'x'; 10]), at(0)));
    // An object larger than the whole budget is refused, not evicting all.
    let tiny = Cache::new(CacheConfig {
        max_bytes: 600,
        ..CacheConfig::default()
    });
    assert!(tiny.store(&r, &ok("max-age=60"), Bytes::from(vec![b'x'; 10]), at(0)));
    assert!(!tiny.store(
        &get("http://example.com/b"),
        &ok("max-age=60"),
        Bytes::from(vec![b'x'; 600]),
        at(0)
    ));
    assert_eq!(tiny.stats().entries, 1);
    assert_eq!(tiny.stats().evictions, 0);
}

/// A cache that holds exactly three of the entries `eviction_store` makes.
fn eviction_cache(eviction: Eviction) -> Cache {
    let probe = cache();
    assert!(probe.store(
        &get("http://e.com/p"),
        &ok("max-age=600"),
        Bytes::from(vec![0; 1000]),
        at(0)
    ));
    let one = probe.stats().stored_bytes;
    assert!(one > 1000);
    Cache::new(CacheConfig {
        max_bytes: 3 * one + one / 2,
        eviction,
        ..CacheConfig::default()
    })
}

fn eviction_store(c: &Cache, name: &str) {
    let r = get(&format!("http://e.com/{name}"));
    assert!(c.store(&r, &ok("max-age=600"), Bytes::from(vec![0; 1000]), at(0)));
}

fn present(c: &Cache, names: &[&str]) -> Vec<bool> {
    names
        .iter()
        .map(|n| !is_miss(&c.lookup(&get(&format!("http://e.com/{n}")), at(1))))
        .collect()
}

/// Same scenario for each policy: store a, b, c; use b, b, c, a; store d.
/// LRU evicts b (least recent), LFU c (2 uses like a, but older), FIFO a.
fn eviction_scenario(eviction: Eviction) -> Cache {
    let c = eviction_cache(eviction);
    for n in ["a", "b", "c"] {
        eviction_store(&c, n);
    }
    assert_eq!(c.stats().entries, 3);
    for n in ["b", "b", "c", "a"] {
        fresh(c.lookup(&get(&format!("http://e.com/{n}")), at(1)));
    }
    eviction_store(&c, "d");
    let s = c.stats();
    assert_eq!((s.entries, s.evictions), (3, 1));
    assert!(s.stored_bytes <= c.config().max_bytes);
    c
}

#[test]
fn eviction_lru() {
    let c = eviction_scenario(Eviction::Lru);
    assert_eq!(
        present(&c, &["a", "b", "c", "d"]),
        [true, false, true, true]
    );
}

#[test]
fn eviction_fifo() {
    let c = eviction_scenario(Eviction::Fifo);
    assert_eq!(
        present(&c, &["a", "b", "c", "d"]),
        [false, true, true, true]
    );
    // Lookups do not save the oldest: b goes next although just used.
    eviction_store(&c, "e");
    assert_eq!(
        present(&c, &["b", "c", "d", "e"]),
        [false, true, true, true]
    );
}

#[test]
fn eviction_lfu_with_aging() {
    let c = eviction_scenario(Eviction::Lfu);
    // c went first (2 uses like a, but used less recently). Aging: that
    // eviction raised the floor to c's priority 2, so the newcomer d
    // starts at 3 and a (priority 2 from its 2 uses) goes next; plain
    // LFU would evict d with its single use.
    eviction_store(&c, "e");
    let s = c.stats();
    assert_eq!((s.entries, s.evictions), (3, 2));
    assert_eq!(
        present(&c, &["a", "b", "c", "d", "e"]),
        [false, true, false, true, true]
    );
}

#[test]
fn purge_by_prefix() {
    let c = cache();
    for u in [
        "http://example.com/images/a.png",
        "http://example.com/images/b.png",
        "http://example.com/css/c.css",
        "http://other.com/images/a.png",
        "http://example.com.evil/images/a.png",
    ] {
        assert!(c.store(&get(u), &ok("max-age=60"), Bytes::from_static(b"x"), at(0)));
    }
    assert_eq!(c.purge("example.com/images/"), 2);
    assert!(is_miss(
        &c.lookup(&get("http://example.com/images/a.png"), at(1))
    ));
    assert!(!is_miss(
        &c.lookup(&get("http://example.com/css/c.css"), at(1))
    ));
    assert!(!is_miss(
        &c.lookup(&get("http://other.com/images/a.png"), at(1))
    ));
    assert_eq!(c.purge("example.com/images/"), 0);
    assert_eq!(c.purge("nothing"), 0);
    assert_eq!(c.purge(""), 3);
    let s = c.stats();
    assert_eq!((s.entries, s.stored_bytes, s.removed), (0, 0, 5));
}

#[test]
fn unsafe_methods_invalidate() {
    let c = cache();
    let r = get("http://example.com/a");
    assert!(c.store(&r, &ok("max-age=60"), Bytes::from_static(b"x"), at(0)));
    let post = req("POST", "http://example.com/a", &[]);
    assert_eq!(c.invalidate(&post, StatusCode::INTERNAL_SERVER_ERROR), 0);
    assert_eq!(c.invalidate(&r, StatusCode::OK), 0);
    assert_eq!(c.invalidate(&post, StatusCode::CREATED), 1);
    assert!(is_miss(&c.lookup(&r, at(1))));
}

#[test]
fn sweep_drops_only_useless_entries() {
    let c = cache();
    assert!(c.store(
        &get("http://e.com/nv"),
        &ok("max-age=10"),
        Bytes::from_static(b"x"),
        at(0)
    ));
    let etag = resp(200, &[("cache-control", "max-age=10"), ("etag", "\"v\"")]);
    assert!(c.store(
        &get("http://e.com/v"),
        &etag,
        Bytes::from_static(b"x"),
        at(0)
    ));
    assert!(c.store(
        &get("http://e.com/sie"),
        &ok("max-age=10, stale-if-error=100"),
        Bytes::from_static(b"x"),
        at(0)
    ));
    assert_eq!(c.sweep(at(5)), 0);
    assert_eq!(c.sweep(at(20)), 1);
    assert_eq!(c.sweep(at(200)), 1);
    assert_eq!(c.stats().entries, 1);
}

#[test]
fn client_conditionals_against_cached() {
    let c = cache();
    let lm = "Tue, 14 Nov 2023 22:00:00 GMT";
    let r = get("http://example.com/a");
    let stored = resp(
        200,
        &[
            ("cache-control", "max-age=60"),
            ("etag", "W/\"v1\""),
            ("last-modified", lm),
        ],
    );
    assert!(c.store(&r, &stored, Bytes::from_static(b"x"), at(0)));
    let hit = fresh(c.lookup(&r, at(1)));
    let inm = |v: &str| req("GET", "http://example.com/a", &[("if-none-match", v)]);
    assert!(hit.not_modified(&inm("\"v1\"")));
    assert!(hit.not_modified(&inm("\"v0\", W/\"v1\"")));
    assert!(hit.not_modified(&inm("*")));
    assert!(!hit.not_modified(&inm("\"v2\"")));
    let ims = req("GET", "http://example.com/a", &[("if-modified-since", lm)]);
    assert!(hit.not_modified(&ims));
    assert!(!hit.not_modified(&r));
    // If-None-Match wins over If-Modified-Since.
    let both = req(
        "GET",
        "http://example.com/a",
        &[("if-none-match", "\"v2\""), ("if-modified-since", lm)],
    );
    assert!(!hit.not_modified(&both));
    // The client's validators are not sent to the origin as ours.
    let (_, cond) = revalidate(c.lookup(&both, at(100)));
    assert_eq!(cond.headers.get("if-none-match").unwrap(), "W/\"v1\"");
    assert_eq!(cond.headers.get("if-modified-since").unwrap(), lm);
}

#[tokio::test]
async fn waiter_does_not_wait_forever() {
    let c = cache();
    let Coalesce::Lead(guard) = c.coalesce("k") else {
        panic!("first caller leads");
    };
    assert_eq!(guard.key(), "k");
    let Coalesce::Wait(w) = c.coalesce("k") else {
        panic!("second caller waits");
    };
    assert!(!w.is_done());
    let Coalesce::Wait(w2) = c.coalesce("k") else {
        panic!("third caller waits");
    };
    assert!(tokio::time::timeout(Duration::from_millis(20), w.wait())
        .await
        .is_err());
    // Other keys are independent.
    assert!(matches!(c.coalesce("other"), Coalesce::Lead(_)));
    drop(guard);
    assert!(w2.is_done());
    tokio::time::timeout(Duration::from_secs(5), w2.wait())
        .await
        .expect("woken");
    assert!(matches!(c.coalesce("k"), Coalesce::Lead(_)));
    assert_eq!(c.stats().coalesced, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coalescing_100_concurrent_misses_one_leader() {
    let cache = Arc::new(cache());
    let leaders = Arc::new(AtomicUsize::new(0));
    let hits = Arc::new(AtomicUsize::new(0));
    let barrier = Arc::new(tokio::sync::Barrier::new(100));
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let (cache, leaders, hits, barrier) = (
            Arc::clone(&cache),
            Arc::clone(&leaders),
            Arc::clone(&hits),
            Arc::clone(&barrier),
        );
        tasks.push(tokio::spawn(async move {
            let r = get("http://example.com/hot");
            assert!(is_miss(&cache.lookup(&r, at(0))));
            match cache.coalesce(&cache.key(&r)) {
                Coalesce::Lead(guard) => {
                    leaders.fetch_add(1, Ordering::SeqCst);
                    // Everybody has asked before the "fetch" finishes.
                    barrier.wait().await;
                    assert!(cache.store(&r, &ok("max-age=60"), Bytes::from_static(b"hot"), at(0)));
                    drop(guard);
                }
                Coalesce::Wait(w) => {
                    barrier.wait().await;
                    tokio::time::timeout(Duration::from_secs(10), w.wait())
                        .await
                        .expect("leader finished");
                    assert_eq!(fresh(cache.lookup(&r, at(1))).body, "hot");
                    hits.fetch_add(1, Ordering::SeqCst);
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(leaders.load(Ordering::SeqCst), 1);
    assert_eq!(hits.load(Ordering::SeqCst), 99);
    let s = cache.stats();
    assert_eq!((s.misses, s.hits, s.coalesced, s.stores), (100, 99, 99, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_failing_hands_over_to_exactly_one_new_leader() {
    let cache = Arc::new(cache());
    let first = Arc::new(AtomicUsize::new(0));
    let second = Arc::new(AtomicUsize::new(0));
    let all = Arc::new(tokio::sync::Barrier::new(100));
    let waiters = Arc::new(tokio::sync::Barrier::new(99));
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let (cache, first, second, all, waiters) = (
            Arc::clone(&cache),
            Arc::clone(&first),
            Arc::clone(&second),
            Arc::clone(&all),
            Arc::clone(&waiters),
        );
        tasks.push(tokio::spawn(async move {
            let key = "example.com/flaky";
            match cache.coalesce(key) {
                Coalesce::Lead(guard) => {
                    first.fetch_add(1, Ordering::SeqCst);
                    all.wait().await;
                    drop(guard); // fetch failed, nothing stored
                }
                Coalesce::Wait(w) => {
                    all.wait().await;
                    tokio::time::timeout(Duration::from_secs(10), w.wait())
                        .await
                        .expect("leader gave up");
                    match cache.coalesce(key) {
                        Coalesce::Lead(guard) => {
                            second.fetch_add(1, Ordering::SeqCst);
                            waiters.wait().await;
                            drop(guard);
                        }
                        Coalesce::Wait(w) => {
                            waiters.wait().await;
                            tokio::time::timeout(Duration::from_secs(10), w.wait())
                                .await
                                .expect("second leader done");
                        }
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(first.load(Ordering::SeqCst), 1);
    assert_eq!(second.load(Ordering::SeqCst), 1);
    assert!(matches!(
        cache.coalesce("example.com/flaky"),
        Coalesce::Lead(_)
    ));
}
