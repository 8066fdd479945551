//! Network namespaces for cluster tests: a [`Lab`] creates namespaces
//! (named after the test process, so that runs never collide), wires
//! them, runs processes in them, and deletes every one of them when
//! dropped, also when the test panics. Namespaces left by a test process
//! that was killed are deleted by the next [`Lab::new`].
//!
//! Needs root (or CAP_SYS_ADMIN + CAP_NET_ADMIN) and `ip`. Without them
//! [`Lab::new`] returns `None` (the test skips) unless
//! `CONVOY_REQUIRE_NETNS` is set, when it panics: CI sets it.

use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;

/// Namespaces of every lab start with this.
const PREFIX: &str = "cvt";

/// One lab at a time in a test process: labs share the machine's
/// conntrack settings and CPU.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// A set of namespaces and the processes running in them.
pub struct Lab {
    id: String,
    namespaces: Vec<String>,
    children: Vec<Child>,
    _turn: std::sync::MutexGuard<'static, ()>,
}

/// Whether this process may create namespaces, and why not.
fn able() -> Result<(), String> {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    if !root {
        return Err("not root".into());
    }
    if !crate::have("ip") {
        return Err("no `ip` (iproute2)".into());
    }
    Ok(())
}

/// Runs `args` and panics with its output when it fails.
pub fn must(args: &[&str]) -> Output {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Deletes the namespaces of test processes that are gone.
fn sweep() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let pid: String = rest.chars().take_while(char::is_ascii_digit).collect();
        if !pid.is_empty() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}

impl Lab {
    /// A new, empty lab; `None` when namespaces cannot be made here (and
    /// `CONVOY_REQUIRE_NETNS` is not set).
    pub fn new(tag: &str) -> Option<Lab> {
        if let Err(why) = able() {
            assert!(
                std::env::var_os("CONVOY_REQUIRE_NETNS").is_none(),
                "CONVOY_REQUIRE_NETNS is set but network namespaces cannot be made: {why}"
            );
            eprintln!("skipped: network namespaces need root and iproute2 ({why})");
            return None;
        }
        let turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        sweep();
        Some(Lab {
            id: format!("{PREFIX}{}{tag}", std::process::id()),
            namespaces: Vec::new(),
            children: Vec::new(),
            _turn: turn,
        })
    }

    /// The full name of namespace `name` of this lab.
    pub fn ns(&self, name: &str) -> String {
        format!("{}-{name}", self.id)
    }

    /// Creates namespace `name` with its loopback up.
    pub fn add(&mut self, name: &str) -> String {
        let ns = self.ns(name);
        must(&["ip", "netns", "add", &ns]);
        self.namespaces.push(ns.clone());
        must(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
        ns
    }

    /// `ip -n NS ARGS...`, which must succeed.
    pub fn ip(&self, name: &str, args: &[&str]) {
        let ns = self.ns(name);
        let mut a = vec!["ip", "-n", &ns];
        a.extend_from_slice(args);
        must(&a);
    }

    /// Runs `args` in namespace `name` and waits for it.
    pub fn exec(&self, name: &str, args: &[&str]) -> Output {
        let ns = self.ns(name);
        Command::new("ip")
            .args(["netns", "exec", &ns])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {args:?} in {ns}: {e}"))
    }

    /// Like [`Lab::exec`]; panics unless it succeeds.
    pub fn must(&self, name: &str, args: &[&str]) -> String {
        let out = self.exec(name, args);
        assert!(
            out.status.success(),
            "{args:?} in {name} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `BIN ctl --admin ADMIN --json ARGS` from namespace `name` (a
    /// node's admin API on its own loopback); the JSON answer, or null.
    pub fn ctl(&self, name: &str, bin: &str, admin: &str, args: &[&str]) -> serde_json::Value {
        let mut all = vec![bin, "ctl", "--admin", admin, "--json"];
        all.extend_from_slice(args);
        let out = self.exec(name, &all);
        serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
    }

    /// Starts `args` in namespace `name`; killed when the lab goes.
    pub fn spawn(&mut self, name: &str, args: &[&str]) {
        let ns = self.ns(name);
        let c = Command::new("ip")
            .args(["netns", "exec", &ns])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {args:?} in {ns}: {e}"));
        self.children.push(c);
    }

    /// A flooding switch: namespace `switch` with bridge `br0` that
    /// learns no address and ages none, so every frame reaches every port
    /// (the segment WLBS needs for a shared MAC). Each of `hosts` gets
    /// `eth0` on it, up, with its addresses (CIDR) and, if given, MAC.
    pub fn segment(&mut self, switch: &str, hosts: &[(&str, &[&str], Option<&str>)]) {
        self.add(switch);
        self.ip(switch, &["link", "add", "br0", "type", "bridge"]);
        self.ip(
            switch,
            &["link", "set", "br0", "type", "bridge", "ageing_time", "0"],
        );
        self.ip(switch, &["link", "set", "br0", "up"]);
        for (i, (host, addrs, mac)) in hosts.iter().enumerate() {
            if !self.namespaces.contains(&self.ns(host)) {
                self.add(host);
            }
            let port = format!("p{i}");
            let (hns, sns) = (self.ns(host), self.ns(switch));
            must(&[
                "ip", "link", "add", "eth0", "netns", &hns, "type", "veth", "peer", "name", &port,
                "netns", &sns,
            ]);
            self.ip(switch, &["link", "set", &port, "master", "br0"]);
            self.ip(
                switch,
                &[
                    "link",
                    "set",
                    &port,
                    "type",
                    "bridge_slave",
                    "learning",
                    "off",
                    "flood",
                    "on",
                ],
            );
            self.ip(switch, &["link", "set", &port, "up"]);
            if let Some(m) = mac {
                // Hosts sharing a MAC would fail IPv6's duplicate address
                // detection on their link-local address: IPv4 only.
                self.sysctl(host, "net.ipv6.conf.all.disable_ipv6", "1");
                self.ip(host, &["link", "set", "eth0", "address", m]);
            }
            for a in *addrs {
                self.ip(host, &["addr", "add", a, "dev", "eth0"]);
            }
            self.ip(host, &["link", "set", "eth0", "up"]);
        }
    }

    /// A point-to-point link: `a`'s interface `a_if` with `a_addr` to
    /// `b`'s `b_if` with `b_addr` (both namespaces exist).
    pub fn link(&mut self, a: (&str, &str, &str), b: (&str, &str, &str)) {
        let (ans, bns) = (self.ns(a.0), self.ns(b.0));
        must(&[
            "ip", "link", "add", a.1, "netns", &ans, "type", "veth", "peer", "name", b.1, "netns",
            &bns,
        ]);
        for (n, i, addr) in [a, b] {
            self.ip(n, &["addr", "add", addr, "dev", i]);
            self.ip(n, &["link", "set", i, "up"]);
        }
    }

    /// Sets a sysctl in namespace `name`.
    pub fn sysctl(&self, name: &str, key: &str, value: &str) {
        self.must(name, &["sysctl", "-qw", &format!("{key}={value}")]);
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        // Processes started elsewhere in these namespaces (convoy nodes
        // the test holds) are the test's to stop; whatever is left is
        // killed with the namespace's processes list.
        for ns in self.namespaces.iter().rev() {
            if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    let _ = Command::new("kill").args(["-9", pid]).status();
                }
            }
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// The load client (Python, run in a namespace); see its docstring.
pub const CLIENT_PY: &str = include_str!("netns_client.py");

/// One attempt of the load client: a new connection and one request.
#[derive(Clone, Debug)]
pub struct Attempt {
    /// When it started (Unix time, s).
    pub at: f64,
    /// It was answered 200.
    pub ok: bool,
    /// The balancer node that carried it (its address).
    pub node: Option<String>,
    /// What went wrong (a Python exception name).
    pub error: Option<String>,
    /// How long it took, s.
    pub secs: f64,
    /// The server that answered (its name).
    pub server: Option<String>,
}

/// A connection the load client held open through the run.
#[derive(Clone, Debug)]
pub struct Held {
    /// The node that carried it.
    pub node: Option<String>,
    /// How it broke, if it did.
    pub broke: Option<String>,
}

/// What the load client saw.
#[derive(Clone, Debug, Default)]
pub struct Load {
    /// Every attempt, in start order.
    pub attempts: Vec<Attempt>,
    /// Every held connection.
    pub held: Vec<Held>,
}

impl Load {
    fn parse(out: &Output) -> Load {
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "the load client printed no result ({e}): {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        });
        let s = |x: &serde_json::Value| x.as_str().map(String::from);
        Load {
            attempts: v["attempts"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|a| Attempt {
                    at: a[0].as_f64().unwrap_or(0.0),
                    ok: a[1].as_bool().unwrap_or(false),
                    node: s(&a[2]),
                    error: s(&a[3]),
                    secs: a[4].as_f64().unwrap_or(0.0),
                    server: s(&a[5]),
                })
                .collect(),
            held: v["held"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|h| Held {
                    node: s(&h["node"]),
                    broke: s(&h["broke"]),
                })
                .collect(),
        }
    }

    /// Answered attempts per node.
    pub fn per_node(&self) -> std::collections::BTreeMap<String, usize> {
        let mut m = std::collections::BTreeMap::new();
        for a in self.attempts.iter().filter(|a| a.ok) {
            *m.entry(a.node.clone().unwrap_or_default()).or_insert(0) += 1;
        }
        m
    }

    /// Failed attempts, as (start, error).
    pub fn failures(&self) -> Vec<(f64, String)> {
        self.attempts
            .iter()
            .filter(|a| !a.ok)
            .map(|a| (a.at, a.error.clone().unwrap_or_default()))
            .collect()
    }
}

/// A load client running in the background.
pub struct LoadRun(Child);

impl LoadRun {
    /// Waits for the client's end (it bounds itself) and reads its result.
    pub fn finish(self) -> Load {
        let out = self.0.wait_with_output().expect("load client");
        Load::parse(&out)
    }
}

impl Lab {
    fn client_cmd(&self, name: &str, settings: &serde_json::Value) -> Command {
        let script =
            std::env::temp_dir().join(format!("convoy-netns-client-{}.py", std::process::id()));
        std::fs::write(&script, CLIENT_PY).expect("write the load client");
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns(name), "python3"])
            .arg(&script)
            .arg(settings.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    }

    /// Runs the load client in namespace `name` to its end.
    pub fn load(&self, name: &str, settings: &serde_json::Value) -> Load {
        let out = self
            .client_cmd(name, settings)
            .output()
            .expect("load client");
        Load::parse(&out)
    }

    /// Starts the load client in namespace `name`.
    pub fn load_start(&self, name: &str, settings: &serde_json::Value) -> LoadRun {
        LoadRun(
            self.client_cmd(name, settings)
                .spawn()
                .expect("load client"),
        )
    }
}
