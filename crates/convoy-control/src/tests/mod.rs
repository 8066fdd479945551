//! Unit tests of the control plane, without processes: configs parsed
//! from text, nodes started in the test's runtime with listeners on
//! loopback ports and the admin API off, commands called directly.

mod commands;
mod diff;
mod run;
mod tick;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use convoy_config::Config;
use convoy_core::events::EventRing;

use crate::{Inputs, Node};

/// A parsed, validated config.
pub(crate) fn config(text: &str) -> Config {
    Config::parse("test.toml", text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

/// A loopback port nothing listens on now.
pub(crate) fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// A node running `text` (admin API off), with no file behind it.
pub(crate) async fn node(text: &str) -> (Node, Inputs) {
    Node::start(config(text), None, Arc::new(EventRing::new(100)), None)
        .await
        .unwrap()
}

/// A file of its own for a test's config.
pub(crate) struct TempConfig(pub(crate) std::path::PathBuf);

impl TempConfig {
    pub(crate) fn new(text: &str) -> TempConfig {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!(
            "convoy-control-test-{}-{n}.toml",
            std::process::id()
        ));
        std::fs::write(&p, text).unwrap();
        TempConfig(p)
    }

    pub(crate) fn write(&self, text: &str) {
        std::fs::write(&self.0, text).unwrap();
    }
}

impl Drop for TempConfig {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A node running the config in `file`, which reloads read again.
pub(crate) async fn node_with_file(file: &TempConfig) -> (Node, Inputs) {
    let cfg = Config::load(&file.0).unwrap();
    Node::start(
        cfg,
        Some(file.0.clone()),
        Arc::new(EventRing::new(100)),
        None,
    )
    .await
    .unwrap()
}

/// The text of a pool `name` without probes, with servers `(name, port,
/// extra lines)` on loopback.
pub(crate) fn pool(name: &str, servers: &[(&str, u16, &str)]) -> String {
    pool_with(name, "", servers)
}

/// [`pool`] with more pool settings (`extra`: lines of `[pools.NAME]`).
pub(crate) fn pool_with(name: &str, extra: &str, servers: &[(&str, u16, &str)]) -> String {
    let mut t = format!(
        "[pools.{name}]\nslow_start = \"0s\"\n{extra}\n[pools.{name}.health]\ncheck = \"none\"\n"
    );
    for (s, port, extra) in servers {
        t.push_str(&format!(
            "[[pools.{name}.servers]]\nname = \"{s}\"\naddress = \"127.0.0.1:{port}\"\n{extra}\n"
        ));
    }
    t
}

/// The text of a TCP listener.
pub(crate) fn tcp_listener(name: &str, port: u16, pool: &str) -> String {
    format!("[[listeners]]\nname = \"{name}\"\naddress = \"127.0.0.1:{port}\"\npool = \"{pool}\"\n")
}

/// The admin API off (tests never bind 9900).
pub(crate) const NO_ADMIN: &str = "[admin]\nenabled = false\n";
