//! The access log and logrotate: the file is moved away, `convoy ctl log
//! reopen` opens it again by its name, and the lines from then on go to
//! the new file.

use std::time::Duration;

use convoy_testkit::http::HttpOrigin;
use convoy_testkit::{free_port, temp_dir, wait_until, Convoy};

const BIN: &str = env!("CARGO_BIN_EXE_convoy");

fn ctl(admin: &str, args: &[&str]) -> std::process::Output {
    std::process::Command::new(BIN)
        .args(["ctl", "--admin", admin])
        .args(args)
        .output()
        .unwrap()
}

async fn get(port: u16) {
    let out = tokio::process::Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            &format!("http://127.0.0.1:{port}/"),
        ])
        .output()
        .await
        .unwrap();
    assert!(out.status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_is_reopened_after_logrotate() {
    let o = HttpOrigin::start("o", Duration::ZERO).await;
    let dir = temp_dir("access-log");
    let log = dir.join("access.log");
    let port = free_port();
    let cfg = format!(
        "[node]\naccess_log = \"{}\"\n\n[[listeners]]\nname = \"web\"\nprotocol = \"http\"\naddress = \"127.0.0.1:{port}\"\npool = \"web\"\n\n\
         [pools.web]\n[[pools.web.servers]]\nname = \"o\"\naddress = \"{}\"\n",
        log.display(),
        o.addr
    );
    let c = Convoy::start(BIN, &cfg).await;
    let admin = c.admin_addr();
    for _ in 0..3 {
        get(port).await;
    }
    let lines = |p: &std::path::Path| {
        std::fs::read_to_string(p)
            .unwrap_or_default()
            .lines()
            .count()
    };
    assert!(wait_until(Duration::from_secs(3), || lines(&log) == 3).await);
    // logrotate: move, then postrotate.
    let rotated = dir.join("access.log.1");
    std::fs::rename(&log, &rotated).unwrap();
    let out = ctl(&admin, &["log", "reopen"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("reopened"));
    assert!(
        c.wait_event("access_log_reopened", Duration::from_secs(2))
            .await
    );
    // The writer switches within 200 ms.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..2 {
        get(port).await;
    }
    assert!(
        wait_until(Duration::from_secs(3), || lines(&log) == 2).await,
        "new lines go to the new file"
    );
    assert_eq!(lines(&rotated), 3, "the old lines stay in the moved file");
    // Without an access log, the command says so.
    drop(c);
    let c = Convoy::start(
        BIN,
        &cfg.replace(&format!("access_log = \"{}\"\n", log.display()), ""),
    )
    .await;
    let out = ctl(&c.admin_addr(), &["log", "reopen"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("there is no access log"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
