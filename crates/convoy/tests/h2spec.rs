//! h2spec, the HTTP/2 conformance suite (146 cases), against convoy's h2c
//! (prior knowledge) and TLS listeners: every case must pass.
//!
//! The binary is taken from `H2SPEC` or found on `PATH`. Without it the
//! test says so and passes, unless `CONVOY_REQUIRE_H2SPEC=1` (CI sets
//! it), where a missing h2spec fails.

use std::time::Duration;

use convoy_testkit::config::{Config, Listener, Pool};
use convoy_testkit::http::HttpOrigin;
use convoy_testkit::{free_port, Convoy};

const BIN: &str = env!("CARGO_BIN_EXE_convoy");

fn h2spec() -> Option<String> {
    if let Ok(p) = std::env::var("H2SPEC") {
        if !p.is_empty() {
            assert!(
                std::path::Path::new(&p).exists(),
                "H2SPEC={p}: no such file"
            );
            return Some(p);
        }
    }
    convoy_testkit::have("h2spec").then(|| "h2spec".to_string())
}

/// Runs h2spec with `args`; the summary line, after checking that no
/// case failed.
async fn run(bin: &str, port: u16, args: &[&str]) -> String {
    let out = tokio::time::timeout(
        Duration::from_secs(300),
        tokio::process::Command::new(bin)
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-o", "5"])
            // A response with a body of a few KB (some cases need one).
            .args(["-P", "/text/4000"])
            .args(args)
            .output(),
    )
    .await
    .expect("h2spec ends within 5 minutes")
    .expect("h2spec runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let summary = text
        .lines()
        .find(|l| l.contains(" tests, "))
        .unwrap_or_default()
        .to_string();
    assert!(
        summary.contains("146 tests, 146 passed, 0 skipped, 0 failed"),
        "h2spec {args:?}: {summary}\n{text}"
    );
    summary
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2spec_passes_every_case_in_clear_and_over_tls() {
    let Some(bin) = h2spec() else {
        assert!(
            std::env::var("CONVOY_REQUIRE_H2SPEC").as_deref() != Ok("1"),
            "h2spec is required here: set H2SPEC=path"
        );
        eprintln!("h2spec not found (set H2SPEC=path or put it on PATH): conformance run skipped");
        return;
    };
    let origin = HttpOrigin::start("o", Duration::ZERO).await;
    let (cert, key) = convoy_testkit::self_signed();
    let (port, tls_port) = (free_port(), free_port());
    let cfg = Config::new()
        .listener(Listener::http(port, "web").set("name", "h2c"))
        .listener(
            Listener::http(tls_port, "web")
                .set("name", "tls")
                .tls(&cert, &key),
        )
        .pool(Pool::new("web").origins(&[&origin]))
        .build();
    let _c = Convoy::start(BIN, &cfg).await;
    let clear = run(&bin, port, &[]).await;
    let tls = run(&bin, tls_port, &["-t", "-k"]).await;
    eprintln!("h2spec h2c: {clear}\nh2spec TLS: {tls}");
}
