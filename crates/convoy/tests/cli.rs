//! The command line: `check` prints the normalized config or the exact
//! error; `run` refuses a bad config with the same error; `--version`.

use std::process::Command;

use convoy_testkit::write_temp;

const BIN: &str = env!("CARGO_BIN_EXE_convoy");

fn convoy(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_prints_normalized_config() {
    let p = write_temp(
        "ok.toml",
        "[[listeners]]\naddress = \"127.0.0.1:7000-7002\"\npool = \"p\"\n[pools.p]\n[[pools.p.servers]]\naddress = \"127.0.0.1:9\"\n",
    );
    let (code, out, err) = convoy(&["check", "-c", p.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    for want in [
        "name = \"127.0.0.1:7000-7002\"",
        "mode = \"multiple\"",
        "affinity = \"none\"",
        "connect_timeout = \"3s\"",
        "priority = 1",
        "zone = \"default\"",
        "interval = \"500ms\"",
    ] {
        assert!(out.contains(want), "missing {want:?} in:\n{out}");
    }
}

#[test]
fn bad_config_is_refused_with_location() {
    let p = write_temp(
        "bad.toml",
        "[[listeners]]\naddress = \"127.0.0.1:7000\"\npool = \"p\"\nafinity = \"client\"\n[pools.p]\n[[pools.p.servers]]\naddress = \"127.0.0.1:9\"\n",
    );
    let path = p.to_str().unwrap();
    for cmd in ["check", "run"] {
        let (code, out, err) = convoy(&[cmd, "-c", path]);
        assert_eq!(code, 2, "{cmd}: {out}{err}");
        assert!(
            err.starts_with(&format!(
                "{path}:4:1: listeners[0].afinity: unknown field `afinity`"
            )),
            "{cmd}: {err}"
        );
    }
    let (code, _, err) = convoy(&["check", "-c", "/nonexistent/convoy.toml"]);
    assert_eq!(code, 2);
    assert!(err.contains("cannot read file"), "{err}");
}

#[test]
fn port_in_use_is_a_clear_error() {
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port();
    // SO_REUSEPORT lets convoy bind beside another convoy, but not beside a
    // socket without it.
    let p = write_temp(
        "busy.toml",
        &format!("[[listeners]]\naddress = \"127.0.0.1:{port}\"\npool = \"p\"\n[pools.p]\n[[pools.p.servers]]\naddress = \"127.0.0.1:9\"\n"),
    );
    let (code, _, err) = convoy(&["run", "-c", p.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!("cannot bind 127.0.0.1:{port}")),
        "{err}"
    );
}

#[test]
fn version_and_help() {
    let (code, out, _) = convoy(&["--version"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("convoy "), "{out}");
    let (code, out, _) = convoy(&["run", "--help"]);
    assert_eq!(code, 0);
    assert!(out.contains("SIGHUP") && out.contains("SIGQUIT"), "{out}");
}

#[test]
fn every_example_config_is_valid() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples");
    let mut n = 0;
    let mut files: Vec<std::path::PathBuf> = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        // One level of subdirectories (e.g. examples/cluster-loopback).
        match std::fs::read_dir(&p) {
            Ok(sub) => files.extend(sub.map(|e| e.unwrap().path())),
            Err(_) => files.push(p),
        }
    }
    for p in files {
        if p.extension().is_some_and(|x| x == "toml") {
            let (code, _, err) = convoy(&["check", "-c", p.to_str().unwrap()]);
            assert_eq!(code, 0, "{}: {err}", p.display());
            n += 1;
        }
    }
    assert!(n >= 3, "expected example configs in {dir}");
}

#[test]
fn demo_serves_weighted_and_stops_on_ctrl_c() {
    use std::io::{BufRead, BufReader};
    let port = convoy_testkit::free_port();
    let listen = format!("127.0.0.1:{port}");
    let admin = format!("127.0.0.1:{}", convoy_testkit::free_port());
    let mut child = Command::new(BIN)
        .args(["demo", "--listen", &listen, "--admin", &admin])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // The banner tells the user what to try.
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut banner = String::new();
    for _ in 0..12 {
        out.read_line(&mut banner).unwrap();
    }
    assert!(
        banner.contains(&format!("curl http://{listen}/")),
        "{banner}"
    );
    assert!(banner.contains(&format!("http://{admin}/")), "{banner}");
    let mut ok = false;
    for _ in 0..100 {
        if std::net::TcpStream::connect(&listen).is_ok() {
            ok = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(ok, "demo balancer did not listen on {listen}");
    // A real HTTP client: 60 requests, each a new connection.
    let mut counts = std::collections::HashMap::new();
    for _ in 0..60 {
        let o = Command::new("curl")
            .args(["-s", "--max-time", "5", &format!("http://{listen}/")])
            .output()
            .expect("curl runs");
        let body = String::from_utf8_lossy(&o.stdout).into_owned();
        let name = body.split_whitespace().nth(2).unwrap_or("?").to_string();
        *counts.entry(name).or_insert(0) += 1;
    }
    // Weights 1:2:3 → about 10/20/30 (the sweep is exact only over a whole
    // table, so allow a few either way; equal weights would fail).
    for (name, want) in [("demo-a", 10), ("demo-b", 20), ("demo-c", 30)] {
        let got = counts.get(name).copied().unwrap_or(0);
        assert!(
            (want - 4..=want + 4).contains(&got),
            "{name}: {got} ({counts:?})"
        );
    }
    // The dashboard and the query through `convoy ctl`.
    let page = Command::new("curl")
        .args(["-s", "--max-time", "5", &format!("http://{admin}/")])
        .output()
        .expect("curl runs");
    assert!(String::from_utf8_lossy(&page.stdout).contains("data-server"));
    let q = Command::new(BIN)
        .args(["ctl", "--admin", &admin, "query"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&q.stdout);
    assert!(q.status.success(), "{text}");
    assert!(text.contains("demo-c") && text.contains("zone-2"), "{text}");
    let killed = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let mut code = None;
    for _ in 0..100 {
        if let Some(st) = child.try_wait().unwrap() {
            code = st.code();
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let _ = child.kill();
    assert_eq!(code, Some(0), "demo must exit cleanly on Ctrl-C");
}
