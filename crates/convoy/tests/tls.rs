//! TLS end to end with real peers (openssl, curl): certificates chosen by
//! SNI with a default, ALPN h2, certificate reload without dropping an
//! open connection, client certificates, TLS to servers, and clear errors
//! for missing or mismatched files.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use convoy_testkit::http::HttpOrigin;
use convoy_testkit::{free_port, temp_dir, wait_until, Convoy};

const BIN: &str = env!("CARGO_BIN_EXE_convoy");

fn run(cmd: &mut Command) -> String {
    let o = cmd.output().expect("command runs");
    assert!(
        o.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A test CA and certificates it signs, made with the openssl CLI.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn new() -> Pki {
        let dir = temp_dir("pki");
        run(Command::new("openssl").current_dir(&dir).args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-subj",
            "/CN=convoy-test-ca",
            "-days",
            "2",
        ]));
        Pki { dir }
    }

    /// A CA with certificates for a.test, b.test (and *.b.test) and
    /// default.test, as [`tls_config`] names them.
    fn three_names() -> Pki {
        let pki = Pki::new();
        pki.issue("a", "a.test", &["a.test"], "one", false);
        pki.issue("b", "b.test", &["b.test", "*.b.test"], "one", false);
        pki.issue("d", "default.test", &["default.test"], "one", false);
        pki
    }

    fn path(&self, f: &str) -> PathBuf {
        self.dir.join(f)
    }

    /// Issues `file`.pem/.key for `cn` with DNS `names`; `org` tells two
    /// issues of the same name apart.
    fn issue(&self, file: &str, cn: &str, names: &[&str], org: &str, client: bool) {
        let ext = self.path(&format!("{file}.ext"));
        let san: Vec<String> = names.iter().map(|n| format!("DNS:{n}")).collect();
        let mut text = format!("subjectAltName={}\n", san.join(","));
        if client {
            text.push_str("extendedKeyUsage=clientAuth\n");
        }
        std::fs::write(&ext, text).unwrap();
        let key = format!("{file}.key");
        let csr = format!("{file}.csr");
        let pem = format!("{file}.pem");
        run(Command::new("openssl").current_dir(&self.dir).args([
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &csr,
            "-subj",
            &format!("/CN={cn}/O={org}"),
        ]));
        run(Command::new("openssl").current_dir(&self.dir).args([
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &pem,
            "-days",
            "2",
            "-extfile",
            &format!("{file}.ext"),
        ]));
    }
}

fn tls_config(pki: &Pki, port: u16, origin: &HttpOrigin, extra: &str) -> String {
    format!(
        "[[listeners]]\nname = \"https\"\nprotocol = \"http\"\naddress = \"127.0.0.1:{port}\"\npool = \"web\"\n\
         [listeners.tls]\n{extra}\ncertificates = [\n\
           {{ cert = \"{a}.pem\", key = \"{a}.key\", names = [\"a.test\"] }},\n\
           {{ cert = \"{b}.pem\", key = \"{b}.key\", names = [\"b.test\", \"*.b.test\"] }},\n\
           {{ cert = \"{d}.pem\", key = \"{d}.key\" }},\n]\n\n\
         [pools.web]\n[[pools.web.servers]]\nname = \"o\"\naddress = \"{}\"\n",
        origin.addr,
        a = pki.path("a").display(),
        b = pki.path("b").display(),
        d = pki.path("d").display(),
    )
}

/// The subject of the certificate the server presents for `sni`.
fn subject(port: u16, sni: Option<&str>) -> String {
    let mut c = Command::new("openssl");
    c.args(["s_client", "-connect", &format!("127.0.0.1:{port}")]);
    if let Some(n) = sni {
        c.args(["-servername", n]);
    } else {
        c.arg("-noservername");
    }
    let o = c.stdin(Stdio::null()).output().unwrap();
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    text.lines()
        .find(|l| l.starts_with("subject="))
        .unwrap_or("")
        .to_string()
}

fn curl(args: &[&str]) -> (bool, String) {
    let o = Command::new("curl")
        .args(["-s", "--max-time", "5"])
        .args(args)
        .output()
        .unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_alpn_reload_and_clear_errors() {
    let pki = Pki::three_names();
    let origin = HttpOrigin::start("o", Duration::ZERO).await;
    let port = free_port();
    let c = Convoy::start(BIN, &tls_config(&pki, port, &origin, "")).await;

    // Each name gets its own certificate; no or an unknown name, the
    // default.
    assert!(subject(port, Some("a.test")).contains("CN = a.test"));
    assert!(subject(port, Some("b.test")).contains("CN = b.test"));
    assert!(subject(port, Some("x.b.test")).contains("CN = b.test"));
    assert!(subject(port, Some("other.test")).contains("CN = default.test"));
    assert!(subject(port, None).contains("CN = default.test"));

    // curl verifies the chain and the name, and gets HTTP/2 by ALPN.
    let ca = pki.path("ca.pem");
    let resolve = format!("a.test:{port}:127.0.0.1");
    let url = format!("https://a.test:{port}/");
    let (ok, out) = curl(&[
        "--cacert",
        ca.to_str().unwrap(),
        "--resolve",
        &resolve,
        "--http2",
        "-w",
        " %{http_version} %{ssl_verify_result}",
        &url,
    ]);
    assert!(ok, "{out}");
    assert_eq!(out, "o 2 0");
    let (ok, out) = curl(&[
        "--cacert",
        ca.to_str().unwrap(),
        "--resolve",
        &resolve,
        "--http1.1",
        "-w",
        " %{http_version}",
        "-H",
        "x-check: 1",
        &url,
    ]);
    assert!(ok);
    assert_eq!(out, "o 1.1");
    // The server learns the request came over TLS.
    let (_, headers) = curl(&[
        "--cacert",
        ca.to_str().unwrap(),
        "--resolve",
        &resolve,
        "-D",
        "-",
        "-o",
        "/dev/null",
        &url,
    ]);
    assert!(
        headers.contains("x-seen-x-forwarded-proto: https"),
        "{headers}"
    );

    // Session resumption. TLS 1.2: openssl reconnects with the session it
    // got. TLS 1.3: a ticket saved by one connection resumes the next.
    let o = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &format!("127.0.0.1:{port}"),
            "-servername",
            "a.test",
            "-tls1_2",
            "-reconnect",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.matches("Reused, TLSv1.2").count() >= 4,
        "TLS 1.2 sessions are resumed: {text}"
    );
    let sess = pki.path("session.pem");
    let keep_open = "sleep 1 | openssl s_client -connect 127.0.0.1:PORT -servername a.test -tls1_3 -sess_out SESS";
    let o = Command::new("sh")
        .arg("-c")
        .arg(
            keep_open
                .replace("PORT", &port.to_string())
                .replace("SESS", sess.to_str().unwrap()),
        )
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&o.stdout).contains("New, TLSv1.3"));
    let o = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &format!("127.0.0.1:{port}"),
            "-servername",
            "a.test",
            "-tls1_3",
            "-sess_in",
            sess.to_str().unwrap(),
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("Reused, TLSv1.3"),
        "TLS 1.3 tickets resume: {text}"
    );

    // An open TLS connection survives a certificate reload; new
    // handshakes get the new certificate.
    let mut s = Command::new("openssl")
        .args([
            "s_client",
            "-quiet",
            "-connect",
            &format!("127.0.0.1:{port}"),
            "-servername",
            "a.test",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut sin = s.stdin.take().unwrap();
    let mut sout = BufReader::new(s.stdout.take().unwrap());
    let ask = |sin: &mut std::process::ChildStdin,
               sout: &mut BufReader<std::process::ChildStdout>| {
        sin.write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
            .unwrap();
        sin.flush().unwrap();
        let mut status = String::new();
        sout.read_line(&mut status).unwrap();
        // Skip headers and the one-letter body.
        loop {
            let mut l = String::new();
            sout.read_line(&mut l).unwrap();
            if l == "\r\n" {
                break;
            }
        }
        let mut body = [0u8; 1];
        std::io::Read::read_exact(sout, &mut body).unwrap();
        status
    };
    assert!(ask(&mut sin, &mut sout).starts_with("HTTP/1.1 200"));
    assert!(subject(port, Some("a.test")).contains("O = one"));
    pki.issue("a", "a.test", &["a.test"], "two", false);
    assert_eq!(
        c.reload(&tls_config(&pki, port, &origin, "")).await,
        "reload_applied"
    );
    assert!(
        subject(port, Some("a.test")).contains("O = two"),
        "new handshakes get the new certificate"
    );
    assert!(
        ask(&mut sin, &mut sout).starts_with("HTTP/1.1 200"),
        "the open connection still works"
    );
    drop(sin);
    let _ = s.kill();
    let _ = s.wait();

    // A key that does not match: the reload is refused, the old
    // certificates stay.
    std::fs::copy(pki.path("b.key"), pki.path("a.key")).unwrap();
    assert_eq!(
        c.reload(&tls_config(&pki, port, &origin, "")).await,
        "reload_refused"
    );
    let refused = c.events("reload_refused");
    let msg = refused.last().unwrap()["error"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(msg.contains("do not belong together"), "{msg}");
    assert!(subject(port, Some("a.test")).contains("O = two"));

    // `convoy check` reports a missing file and a mismatched key clearly.
    let cfg = pki.path("check.toml");
    std::fs::write(&cfg, tls_config(&pki, free_port(), &origin, "")).unwrap();
    let o = Command::new(BIN)
        .args(["check", "-c"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("do not belong together"));
    pki.issue("a", "a.test", &["a.test"], "three", false);
    std::fs::remove_file(pki.path("d.key")).unwrap();
    let o = Command::new(BIN)
        .args(["check", "-c"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("listeners[0].tls.certificates[2]") && err.contains("d.key"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watched_files_client_certificates_and_tls_to_servers() {
    let pki = Pki::three_names();
    pki.issue("client", "client", &["client.test"], "one", true);
    let origin = HttpOrigin::start("o", Duration::ZERO).await;
    let port = free_port();
    let extra = format!(
        "client_ca = \"{}\"\nwatch = \"200ms\"",
        pki.path("ca.pem").display()
    );
    let c = Convoy::start(BIN, &tls_config(&pki, port, &origin, &extra)).await;
    let ca = pki.path("ca.pem");
    let resolve = format!("a.test:{port}:127.0.0.1");
    let url = format!("https://a.test:{port}/");
    // Without a client certificate: refused; with one: served.
    let (ok, _) = curl(&[
        "--cacert",
        ca.to_str().unwrap(),
        "--resolve",
        &resolve,
        &url,
    ]);
    assert!(!ok, "a client without a certificate is refused");
    let cert = pki.path("client.pem");
    let key = pki.path("client.key");
    let (ok, out) = curl(&[
        "--cacert",
        ca.to_str().unwrap(),
        "--resolve",
        &resolve,
        "--cert",
        cert.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
        &url,
    ]);
    assert!(ok && out == "o", "{out}");

    // Watched files: a new certificate is picked up without a reload.
    pki.issue("a", "a.test", &["a.test"], "watched", false);
    assert!(
        c.wait_event("tls_reloaded", Duration::from_secs(5)).await,
        "{}",
        c.stderr()
    );
    let mut s = Command::new("openssl");
    s.args([
        "s_client",
        "-connect",
        &format!("127.0.0.1:{port}"),
        "-servername",
        "a.test",
        "-cert",
        cert.to_str().unwrap(),
        "-key",
        key.to_str().unwrap(),
    ]);
    let text =
        String::from_utf8_lossy(&s.stdin(Stdio::null()).output().unwrap().stdout).into_owned();
    assert!(text.contains("O = watched"), "{text}");

    // TLS to servers: a second node speaks TLS to this one (verifying it
    // with the CA and the name a.test).
    let front = free_port();
    let text = format!(
        "[[listeners]]\nprotocol = \"http\"\naddress = \"127.0.0.1:{front}\"\npool = \"secure\"\n\n\
         [pools.secure]\ntls = {{ ca = \"{}\", sni = \"a.test\" }}\n\
         [[pools.secure.servers]]\nname = \"tls-node\"\naddress = \"127.0.0.1:{port}\"\n",
        ca.display()
    );
    let _front = Convoy::start(BIN, &text).await;
    // The back node wants a client certificate, which the front node does
    // not have: the handshake fails and the client gets 502.
    let (ok, out) = curl(&[
        "-w",
        "%{http_code}",
        "-o",
        "/dev/null",
        &format!("http://127.0.0.1:{front}/"),
    ]);
    assert!(ok && out == "502", "{out}: {}", _front.stderr());
    // Without client authentication on the back node, it works.
    c.reload(&tls_config(&pki, port, &origin, "")).await;
    let ok = wait_until(Duration::from_secs(5), || {
        curl(&[&format!("http://127.0.0.1:{front}/")]) == (true, "o".to_string())
    })
    .await;
    assert!(ok, "TLS to the server works");
    // A wrong SNI name fails verification: 502, never a silent success.
    let wrong = free_port();
    let text = text
        .replace(&format!("127.0.0.1:{front}"), &format!("127.0.0.1:{wrong}"))
        .replace("sni = \"a.test\"", "sni = \"nope.test\"");
    let _w = Convoy::start(BIN, &text).await;
    let (_, out) = curl(&[
        "-w",
        "%{http_code}",
        "-o",
        "/dev/null",
        &format!("http://127.0.0.1:{wrong}/"),
    ]);
    assert_eq!(out, "502");
    let _ = Path::new(".");
}

/// An HTTPS keep-alive connection from `openssl s_client`: requests
/// written to it in the steps given (bytes, then a pause), everything it
/// got back once the server closed.
fn tls_session(port: u16, steps: &[(Vec<u8>, Duration)]) -> String {
    // Ended after 15 s whatever happens (a request never answered).
    let mut child = Command::new("timeout")
        .args(["15", "openssl", "s_client", "-quiet", "-tls1_3"])
        .args(["-servername", "a.test"])
        .args(["-connect", &format!("127.0.0.1:{port}")])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut got = Vec::new();
        let _ = std::io::Read::read_to_end(&mut stdout, &mut got);
        String::from_utf8_lossy(&got).into_owned()
    });
    for (bytes, pause) in steps {
        stdin.write_all(bytes).unwrap();
        stdin.flush().unwrap();
        std::thread::sleep(*pause);
    }
    // The last request asked to close: the server ends the connection.
    let got = reader.join().unwrap();
    drop(stdin);
    let _ = child.kill();
    let _ = child.wait();
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_tls_keep_alive_connection_serves_later_and_pipelined_requests() {
    // An idle TLS connection waits on its socket while the session holds
    // nothing to read, and holds no read buffer: a request arriving after
    // a wait is served, and so are pipelined requests past the 4 KB read
    // buffer, where the next one can wait in the session rather than on
    // the socket. (The unit test beside the TLS stream's `poll_idle` pins
    // that case; here it is the whole path with a real client.)
    let pki = Pki::three_names();
    let origin = HttpOrigin::start("o", Duration::ZERO).await;
    let port = free_port();
    let _c = Convoy::start(BIN, &tls_config(&pki, port, &origin, "")).await;
    let req = |path: &str, pad: usize, close: bool| {
        let mut r = format!("GET /{path} HTTP/1.1\r\nHost: a.test\r\n");
        if pad > 0 {
            r.push_str(&format!("X-Pad: {}\r\n", "p".repeat(pad)));
        }
        if close {
            r.push_str("Connection: close\r\n");
        }
        r.push_str("\r\n");
        r.into_bytes()
    };
    // "three" is exactly the 4 KB read buffer: once it is read, the
    // buffer is empty while the session already holds "four".
    let short = req("three", 1, false).len();
    let three = req("three", 4096 - short + 1, false);
    assert_eq!(three.len(), 4096);
    let mut pipelined = three;
    pipelined.extend(req("four", 6000, true));
    let port2 = port;
    let got = tokio::task::spawn_blocking(move || {
        tls_session(
            port2,
            &[
                (req("one", 0, false), Duration::from_millis(1500)),
                (req("two", 0, false), Duration::from_millis(300)),
                (pipelined, Duration::ZERO),
            ],
        )
    })
    .await
    .unwrap();
    assert_eq!(got.matches("HTTP/1.1 200").count(), 4, "{got}");
    let paths = origin.seen.paths.lock().unwrap().clone();
    assert_eq!(paths, ["/one", "/two", "/three", "/four"], "{got}");
}
