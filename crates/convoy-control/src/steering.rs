//! Steering client traffic to this node (`[cluster] steering`), the
//! I/O side of [`convoy_cluster::steer`]:
//!
//! - `shared`: convoy's nftables table (`ip convoy`) is replaced, in one
//!   `nft -f` transaction, whenever the buckets this node owns change;
//!   conntrack's loose pickup is turned off so that only an opening SYN
//!   can start a flow on a node. The virtual addresses go on `interface`
//!   once the first table is in place. At exit the addresses come off
//!   first, then the table: a stopped node neither answers nor resets
//!   the cluster's flows.
//! - `ecmp`: convoy runs bird2 as its child (with a parent-death signal:
//!   a killed convoy takes its BGP sessions, hence its routes, with it)
//!   and enables bird's static protocol of the virtual addresses
//!   (announce) while this node is converged, serves and reaches a
//!   server, and disables it (withdraw) otherwise and at exit.
//!
//! The commands run one at a time, in order, in a task of their own, so
//! the control loop never waits for them. At start the tools are
//! checked: a missing `nft`, `ip` or bird, or no permission, is a clear
//! start-up error naming the package to install.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use convoy_cluster::doc::MemberState;
use convoy_cluster::steer::{self, BirdSettings, Key, Rule};
use convoy_cluster::view::View;
use convoy_config::{Affinity, Cluster, Config, Protocol, Steering as Mode};
use convoy_core::control::SteeringInfo;
use tokio::io::AsyncBufReadExt;
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use crate::error::Error;

/// A command for the steering task.
enum Job {
    /// Replace convoy's nftables table with this script; the owned
    /// buckets per listener (shared), for the status.
    Nft(String, Option<BTreeMap<String, u64>>),
    /// Announce (true) or withdraw the virtual addresses.
    Announce(bool),
    /// A new process took over (binary upgrade): leave the table and the
    /// addresses to it, stop bird.
    HandOver(oneshot::Sender<()>),
    /// Undo everything (exit); answered when done.
    Remove(oneshot::Sender<()>),
}

/// A view's owners of every bucket (index into its candidates) and its
/// candidates.
type Owners = (Arc<BTreeMap<String, Vec<Option<u16>>>>, Vec<String>);

/// This node's steering.
pub(crate) struct Steering {
    mode: Mode,
    vips: Vec<IpAddr>,
    rules: Vec<Rule>,
    /// The owned buckets last sent (shared).
    owned: BTreeMap<String, Vec<u16>>,
    /// The rules changed since `owned` was sent: send again.
    dirty: bool,
    /// The buckets the view gives this node, and since when.
    want: (BTreeMap<String, Vec<u16>>, tokio::time::Instant),
    /// The owners and candidates of the last view, and of the view before
    /// `want` last changed.
    last: Option<Owners>,
    before: Option<Owners>,
    /// The peers stray packets go to (ecmp).
    peers: Vec<IpAddr>,
    /// This node has converged since it started (ecmp).
    converged_once: bool,
    /// Whether the routes were last told announced (ecmp).
    announced: Option<bool>,
    status: Arc<Mutex<SteeringInfo>>,
    tx: mpsc::UnboundedSender<Job>,
}

/// The rules of `cfg`'s listeners on virtual addresses.
pub(crate) fn rules(cfg: &Config) -> Vec<Rule> {
    let vips = cfg.cluster.as_ref().map_or(&[][..], |c| &c.vips[..]);
    cfg.listeners
        .iter()
        .filter(|l| l.address.ip.is_unspecified() || vips.contains(&l.address.ip))
        .map(|l| Rule {
            listener: l.name.clone(),
            udp: l.protocol == Protocol::Udp,
            ports: (l.address.first, l.address.last),
            address: l.address.ip,
            key: match l.affinity {
                Affinity::Client => Key::Client,
                Affinity::Network => Key::Network,
                Affinity::None => Key::Flow,
            },
        })
        .collect()
}

/// Runs a command; its output, or its error output when it fails.
async fn run(cmd: &mut Command, stdin: Option<&str>) -> Result<String, String> {
    use std::process::Stdio;
    use tokio::io::AsyncWriteExt;
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|e| e.to_string())?;
    if let (Some(text), Some(mut i)) = (stdin, child.stdin.take()) {
        i.write_all(text.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
    }
    let out = tokio::time::timeout(Duration::from_secs(10), child.wait_with_output())
        .await
        .map_err(|_| "no answer in 10 s".to_string())?
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
        Err(if err.is_empty() {
            format!("{}", out.status)
        } else {
            err
        })
    }
}

/// `ip` with these arguments.
fn ip(args: &[String]) -> Command {
    let mut c = Command::new("ip");
    c.args(args);
    c
}

/// The bird that convoy runs for `ecmp`.
struct Bird {
    child: Child,
    dir: PathBuf,
    birdc: String,
    protocols: Vec<&'static str>,
}

impl Bird {
    /// Writes bird's config and starts it; waits until it answers.
    async fn start(c: &Cluster) -> Result<Bird, String> {
        let b = c.bgp.as_ref().ok_or("no [cluster.bgp]")?;
        let router_id = match (b.router_id, c.address.ip()) {
            (Some(r), _) => r,
            (None, IpAddr::V4(a)) => a,
            (None, IpAddr::V6(_)) => return Err("bgp.router_id is needed".into()),
        };
        let settings = BirdSettings {
            router_id,
            local_as: b.local_as,
            neighbors: b.neighbors.iter().map(|n| (n.address, n.asn)).collect(),
            hold_secs: b.hold_time.get().as_secs().max(3),
            bfd_ms: b.bfd.then(|| {
                b.bfd_interval
                    .get()
                    .as_millis()
                    .try_into()
                    .unwrap_or(u64::MAX)
            }),
            vips: c.vips.clone(),
        };
        let tmp = std::env::temp_dir();
        // Directories of convoy processes that were killed.
        for e in std::fs::read_dir(&tmp).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(pid) = name.strip_prefix("convoy-bird-") {
                if pid.parse::<u32>().is_ok() && !std::path::Path::new("/proc").join(pid).exists() {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        let dir = tmp.join(format!("convoy-bird-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let conf = dir.join("bird.conf");
        std::fs::write(&conf, steer::bird_config(&settings))
            .map_err(|e| format!("{}: {e}", conf.display()))?;
        let sock = dir.join("bird.ctl");
        // setpriv (util-linux) gives bird a parent-death signal: if convoy
        // is killed, bird goes too and the routers drop its routes.
        let mut child = Command::new("setpriv")
            .args(["--pdeathsig", "KILL", "--"])
            .arg(&b.bird)
            .arg("-f")
            .arg("-c")
            .arg(&conf)
            .arg("-s")
            .arg(&sock)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot run setpriv {}: {e}", b.bird))?;
        if let Some(err) = child.stderr.take() {
            tokio::spawn(async move {
                let mut lines = tokio::io::BufReader::new(err).lines();
                while let Ok(Some(l)) = lines.next_line().await {
                    info!(event = "bird", line = %l);
                }
            });
        }
        let mut bird = Bird {
            child,
            dir,
            birdc: b.birdc.clone(),
            protocols: [true, false]
                .into_iter()
                .filter(|v4| c.vips.iter().any(|v| v.is_ipv4() == *v4))
                .map(steer::bird_protocol)
                .collect(),
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            if let Ok(Some(st)) = bird.child.try_wait() {
                return Err(format!(
                    "{} exited at start ({st}); its log lines above say why",
                    b.bird
                ));
            }
            match run(&mut bird.birdc(&["show", "status"]), None).await {
                Ok(_) => return Ok(bird),
                Err(e) if tokio::time::Instant::now() >= deadline => {
                    return Err(format!(
                        "{} does not answer on {}: {e}",
                        b.birdc,
                        sock.display()
                    ))
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    fn birdc(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.birdc);
        c.arg("-s").arg(self.dir.join("bird.ctl")).args(args);
        c
    }

    /// Enables or disables the static protocols.
    async fn announce(&self, on: bool) -> Result<(), String> {
        for p in &self.protocols {
            run(
                &mut self.birdc(&[if on { "enable" } else { "disable" }, p]),
                None,
            )
            .await?;
        }
        Ok(())
    }

    /// Withdraws, then stops bird and removes its directory.
    async fn stop(mut self) {
        let _ = self.announce(false).await;
        let _ = self.child.kill().await;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The checks at start: nft and ip usable, the interface present.
async fn check_tools(c: &Cluster) -> Result<(), Error> {
    run(Command::new("nft").args(["list", "tables"]), None)
        .await
        .map_err(|e| {
            Error::Cluster(format!(
                "steering needs nftables and the right to use it (apt-get install nftables; run as root or with CAP_NET_ADMIN): nft: {e}"
            ))
        })?;
    let iface = c.interface.as_deref().unwrap_or("lo");
    run(
        Command::new("ip").args(["link", "show", "dev", iface]),
        None,
    )
    .await
    .map_err(|e| {
        Error::Cluster(format!(
            "steering: interface {iface:?} (apt-get install iproute2 if `ip` is missing): {e}"
        ))
    })?;
    Ok(())
}

/// Puts convoy's first table in (shared: no new flow until the first
/// view; ecmp: no peer yet) and lets only an opening SYN start a flow.
async fn first_table(script: &str) -> Result<(), Error> {
    run(Command::new("nft").args(["-f", "-"]), Some(script))
        .await
        .map_err(|e| Error::Cluster(format!("steering: nft refused convoy's table: {e}")))?;
    std::fs::write("/proc/sys/net/netfilter/nf_conntrack_tcp_loose", "0").map_err(|e| {
        Error::Cluster(format!(
            "steering: cannot set net.netfilter.nf_conntrack_tcp_loose = 0: {e}"
        ))
    })
}

impl Steering {
    /// Checks the tools for `cfg`'s steering and starts its task (none
    /// without steering); for `ecmp`, starts bird.
    pub(crate) async fn start(cfg: &Config) -> Result<Option<Steering>, Error> {
        let Some(c) = &cfg.cluster else {
            return Ok(None);
        };
        let addrs = c.interface.clone().map(|i| (i, c.vips.clone()));
        let rules = rules(cfg);
        let bird = match c.steering {
            Mode::None => return Ok(None),
            Mode::Shared => {
                check_tools(c).await?;
                first_table(&steer::nft_script(&c.vips, &rules, &BTreeMap::new())).await?;
                None
            }
            Mode::Ecmp => {
                check_tools(c).await?;
                // bird first: if it cannot run, nothing was changed.
                let bird = Bird::start(c).await.map_err(|e| {
                    Error::Cluster(format!(
                        "steering = \"ecmp\" runs bird2 (apt-get install bird2 util-linux; as root or with CAP_NET_ADMIN): {e}"
                    ))
                })?;
                if let Err(e) = first_table(&steer::ecmp_nft_script(&c.vips, &rules, &[])).await {
                    bird.stop().await;
                    return Err(e);
                }
                Some(bird)
            }
        };
        // The listeners bind next: the addresses must be there.
        if let Err(e) = addresses(&addrs, true).await {
            if let Some(b) = bird {
                b.stop().await;
            }
            let _ = addresses(&addrs, false).await;
            let _ = run(
                Command::new("nft").args(["-f", "-"]),
                Some(&steer::nft_remove()),
            )
            .await;
            return Err(Error::Cluster(format!(
                "steering: cannot add the virtual addresses: {e}"
            )));
        }
        let status = Arc::new(Mutex::new(SteeringInfo {
            mode: match c.steering {
                Mode::Shared => "shared",
                _ => "ecmp",
            }
            .into(),
            active: c.steering == Mode::Shared,
            ..SteeringInfo::default()
        }));
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(worker(rx, bird, addrs, c.steering, Arc::clone(&status)));
        Ok(Some(Steering {
            mode: c.steering,
            vips: c.vips.clone(),
            rules,
            owned: BTreeMap::new(),
            dirty: false,
            want: (BTreeMap::new(), tokio::time::Instant::now()),
            last: None,
            before: None,
            peers: Vec::new(),
            converged_once: false,
            announced: Some(false),
            status,
            tx,
        }))
    }

    /// After a reload: the listeners' rules may have changed.
    pub(crate) fn reconfigure(&mut self, cfg: &Config) {
        let rules = rules(cfg);
        if rules != self.rules {
            self.rules = rules;
            self.dirty = true;
        }
    }

    /// Applies what the view says this node owns (shared), or whether it
    /// announces (ecmp): converged, serving, and reaching a server.
    pub(crate) fn update(&mut self, v: &View, me: &str, serving: bool, reaches_server: bool) {
        match self.mode {
            Mode::None => {}
            Mode::Shared => {
                let i = v.candidates.iter().position(|c| c == me);
                let owned: BTreeMap<String, Vec<u16>> = self
                    .rules
                    .iter()
                    .map(|r| {
                        let mine = match (i, v.owners.get(&r.listener)) {
                            (Some(i), Some(o)) if serving => o
                                .iter()
                                .enumerate()
                                .filter(|(_, x)| **x == Some(i as u16))
                                .map(|(b, _)| b as u16)
                                .collect(),
                            _ => Vec::new(),
                        };
                        (r.listener.clone(), mine)
                    })
                    .collect();
                if owned != self.want.0 {
                    self.want = (owned, tokio::time::Instant::now());
                    self.before = self.last.take();
                }
                self.last = Some((Arc::clone(&v.owners), v.candidates.clone()));
                let settled = v.state == Some(MemberState::Converged)
                    && self.want.1.elapsed() >= steer::TAKE_AFTER;
                // A bucket whose owner before the change is gone (dead,
                // left) has nobody to release it: taken at once.
                let live: std::collections::HashSet<&str> = v
                    .members
                    .iter()
                    .filter(|m| m.state != MemberState::Left)
                    .map(|m| m.name.as_str())
                    .collect();
                let free = |l: &str, b: u16| {
                    self.before.as_ref().is_some_and(|(owners, cands)| {
                        match owners.get(l).and_then(|o| o.get(usize::from(b))) {
                            Some(Some(i)) => cands
                                .get(usize::from(*i))
                                .is_some_and(|c| !live.contains(c.as_str())),
                            _ => true,
                        }
                    })
                };
                let next = steer::next_owned(&self.owned, &self.want.0, settled, free);
                if next != self.owned || self.dirty {
                    self.send_owned(next);
                }
            }
            Mode::Ecmp => {
                // The peers that may have a connection the routers send
                // here (live members but this node).
                let mut peers: Vec<IpAddr> = v
                    .members
                    .iter()
                    .filter(|m| !m.me && m.state != MemberState::Left)
                    .map(|m| m.addr.ip())
                    .collect();
                peers.sort_unstable();
                if peers != self.peers || self.dirty {
                    let script = steer::ecmp_nft_script(&self.vips, &self.rules, &peers);
                    let _ = self.tx.send(Job::Nft(script, None));
                    self.peers = peers;
                    self.dirty = false;
                }
                self.converged_once |= v.state == Some(MemberState::Converged);
                let on = steer::announce(self.converged_once, v.state, serving, reaches_server);
                if self.announced != Some(on) {
                    let _ = self.tx.send(Job::Announce(on));
                    self.announced = Some(on);
                }
            }
        }
    }

    fn send_owned(&mut self, owned: BTreeMap<String, Vec<u16>>) {
        let counts = owned
            .iter()
            .map(|(l, b)| (l.clone(), b.len() as u64))
            .collect();
        let script = steer::nft_script(&self.vips, &self.rules, &owned);
        let _ = self.tx.send(Job::Nft(script, Some(counts)));
        self.owned = owned;
        self.dirty = false;
    }

    /// What the steering does now, for `convoy ctl cluster`.
    pub(crate) fn info(&self) -> SteeringInfo {
        self.status.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Undoes the steering (exit): addresses off, table removed, routes
    /// withdrawn. With `handover` (a binary upgrade) the table and the
    /// addresses stay for the new process.
    pub(crate) async fn remove(&self, handover: bool) {
        let (tx, rx) = oneshot::channel();
        let job = if handover {
            Job::HandOver(tx)
        } else {
            Job::Remove(tx)
        };
        if self.tx.send(job).is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(5), rx).await;
        }
    }
}

/// Puts the virtual addresses on their interface, or takes them off.
async fn addresses(a: &Option<(String, Vec<IpAddr>)>, add: bool) -> Result<(), String> {
    if let Some((iface, vips)) = a {
        for args in steer::address_commands(vips, iface, add) {
            let r = run(&mut ip(&args), None).await;
            if add {
                r?;
            }
        }
    }
    Ok(())
}

/// Runs the steering commands in order.
async fn worker(
    mut rx: mpsc::UnboundedReceiver<Job>,
    mut bird: Option<Bird>,
    addrs: Option<(String, Vec<IpAddr>)>,
    mode: Mode,
    status: Arc<Mutex<SteeringInfo>>,
) {
    let note = |r: Result<(), String>, f: &dyn Fn(&mut SteeringInfo)| {
        if let Ok(mut s) = status.lock() {
            s.changes += 1;
            match &r {
                Ok(()) => {
                    s.error = None;
                    f(&mut s);
                }
                Err(e) => s.error = Some(e.clone()),
            }
        }
        r
    };
    while let Some(job) = rx.recv().await {
        match job {
            Job::Nft(script, owned) => {
                let r = run(Command::new("nft").args(["-f", "-"]), Some(&script))
                    .await
                    .map(|_| ());
                match (r, owned) {
                    (r, Some(owned)) => match note(r, &|s| {
                        s.active = true;
                        s.owned = owned.clone();
                    }) {
                        Ok(()) => {
                            info!(event = "steering_applied", mode = "shared", owned = ?owned)
                        }
                        Err(e) => warn!(event = "steering_error", mode = "shared", error = %e),
                    },
                    (Ok(()), None) => info!(event = "steering_peers", mode = "ecmp"),
                    (Err(e), None) => {
                        let _ = note(Err(e.clone()), &|_| {});
                        warn!(event = "steering_error", mode = "ecmp", error = %e);
                    }
                }
            }
            Job::Announce(on) => {
                let r = match &bird {
                    Some(b) => b.announce(on).await,
                    None => Err("bird is not running".into()),
                };
                match note(r, &|s| s.active = on) {
                    Ok(()) => info!(event = "steering_applied", mode = "ecmp", announced = on),
                    Err(e) => warn!(event = "steering_error", mode = "ecmp", error = %e),
                }
            }
            Job::HandOver(done) => {
                if let Some(b) = bird.take() {
                    b.stop().await;
                }
                info!(event = "steering_handed_over");
                let _ = done.send(());
                return;
            }
            Job::Remove(done) => {
                if let Some(b) = bird.take() {
                    b.stop().await;
                }
                let _ = addresses(&addrs, false).await;
                if mode != Mode::None {
                    let _ = run(
                        Command::new("nft").args(["-f", "-"]),
                        Some(&steer::nft_remove()),
                    )
                    .await;
                }
                info!(event = "steering_removed");
                let _ = done.send(());
                return;
            }
        }
    }
}

/// Whether this node's own checks see a server up (in any pool).
pub(crate) fn reaches_server(snap: &convoy_core::Snapshot) -> bool {
    snap.pools
        .values()
        .any(|p| p.servers.iter().any(|s| s.state.is_seen_up()))
}
