//! The admin API over TLS (`[admin] tls`): `convoy ctl` with an https
//! address and `--cacert`, curl for the dashboard; clear HTTP refused.

use std::process::Command;

use convoy_testkit::{self_signed_leaf, Convoy};

const BIN: &str = env!("CARGO_BIN_EXE_convoy");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_speaks_tls() {
    let (cert, key) = self_signed_leaf();
    let cfg = format!(
        "[admin]\naddress = \"127.0.0.1:0\"\ntoken = \"admin-tls-token\"\n\
         tls = {{ certificates = [{{ cert = \"{}\", key = \"{}\" }}] }}\n\n\
         [[listeners]]\naddress = \"127.0.0.1:{}\"\npool = \"p\"\n\n\
         [pools.p]\nhealth = {{ check = \"none\" }}\n[[pools.p.servers]]\naddress = \"127.0.0.1:9\"\n",
        cert.display(),
        key.display(),
        convoy_testkit::free_port()
    );
    let c = Convoy::start(BIN, &cfg).await;
    let admin = c.admin_addr();
    let https = format!("https://{admin}");
    let ctl = |args: &[&str]| {
        Command::new(BIN)
            .args(["ctl", "--token", "admin-tls-token"])
            .args(args)
            .output()
            .unwrap()
    };
    let ok = ctl(&[
        "--admin",
        &https,
        "--cacert",
        cert.to_str().unwrap(),
        "--json",
        "query",
    ]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let q: serde_json::Value = serde_json::from_slice(&ok.stdout).unwrap();
    assert_eq!(q["state"], "converged");
    // Without the CA, no: a usage error.
    let no_ca = ctl(&["--admin", &https, "query"]);
    assert_eq!(no_ca.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&no_ca.stderr).contains("--cacert"));
    // Clear HTTP to a TLS port gets no answer.
    let clear = ctl(&["--admin", &admin, "query"]);
    assert!(!clear.status.success());
    // The dashboard, with curl.
    let o = Command::new("curl")
        .args([
            "-s",
            "--cacert",
            cert.to_str().unwrap(),
            &format!("{https}/"),
        ])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("<html"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn check_refuses_an_admin_tls_without_certificates() {
    let cfg = convoy_testkit::write_temp(
        "admin.toml",
        "[admin]\ntls = { certificates = [] }\n\n[[listeners]]\naddress = \"127.0.0.1:1\"\npool = \"p\"\n\n[[pools.p.servers]]\naddress = \"127.0.0.1:9\"\n",
    );
    let o = Command::new(BIN)
        .args(["check", "-c"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&o.stderr)
            .contains("admin.tls.certificates: give at least one certificate"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}
