//! The cluster agent: one task per node that owns the cluster socket. It
//! runs foca (SWIM membership and failure detection) over authenticated
//! datagrams ([`crate::envelope`]), publishes this node's doc to the
//! other members (to all at every change, to a few at random every
//! second, and to every member that appears), collects theirs, and
//! recomputes the [`View`] after every event. The control plane reads
//! the view from a `watch` channel and tells the agent what this node
//! sees and decides through [`Input`]s.
//!
//! Datagrams carry one of two payloads: a foca message (kind 0), or a
//! piece of a node's doc (kind 1: the doc, encoded with postcard, cut
//! into pieces that fit a datagram and put together again on arrival).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::num::{NonZeroU8, NonZeroUsize};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use foca::{
    AccumulatingRuntime, Foca, Identity, NoCustomBroadcast, OwnedNotification, PostcardCodec, Timer,
};
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tracing::{info, warn};

use crate::doc::{Commands, MemberState, NodeDoc, Stamp};
use crate::envelope::{Envelope, Refused, MAX_DATAGRAM, MAX_PAYLOAD};
use crate::fingerprint::Fingerprint;
use crate::pieces::{cut, Assembler};
use crate::view::{self, ListenerRule, Peer, View};

/// A member's identity for foca: its cluster address, name and start
/// time, and a counter bumped when it rejoins after being taken for dead.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Id {
    /// Cluster address.
    pub addr: SocketAddr,
    /// Node name.
    pub name: String,
    /// Start time (ms since the Unix epoch).
    pub epoch: u64,
    /// Rejoins.
    pub bump: u16,
}

impl Identity for Id {
    type Addr = SocketAddr;

    fn renew(&self) -> Option<Self> {
        Some(Id {
            bump: self.bump.wrapping_add(1),
            ..self.clone()
        })
    }

    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn win_addr_conflict(&self, other: &Self) -> bool {
        (self.epoch, self.bump) > (other.epoch, other.bump)
    }
}

/// What the agent needs to join.
#[derive(Clone, Debug)]
pub struct Settings {
    /// This node's name.
    pub name: String,
    /// Its priority.
    pub priority: u32,
    /// Its cluster address.
    pub address: SocketAddr,
    /// Addresses to join through.
    pub seeds: Vec<SocketAddr>,
    /// The cluster key.
    pub key: Vec<u8>,
    /// Probe interval.
    pub probe_interval: Duration,
    /// Time a suspected member has to refute before it is down.
    pub suspicion: Duration,
}

impl Settings {
    /// From the `[cluster]` table (the key is read now).
    pub fn from_config(c: &convoy_config::Cluster) -> Result<Settings, String> {
        Ok(Settings {
            name: c.name.clone(),
            priority: c.priority,
            address: c.address,
            seeds: c.seeds.clone(),
            key: c.resolve_key()?,
            probe_interval: c.probe_interval.get(),
            suspicion: c.suspicion.get(),
        })
    }
}

/// The servers of the pools listener `l` sends to (its own and its
/// routes'), as (pool, server).
fn servers_of(cfg: &convoy_config::Config, l: &convoy_config::Listener) -> Vec<(String, String)> {
    let mut pools: Vec<&str> = std::iter::once(l.pool.as_str())
        .chain(l.routes.iter().filter_map(|r| r.pool.as_deref()))
        .collect();
    pools.sort_unstable();
    pools.dedup();
    cfg.pools
        .iter()
        .filter(|(name, _)| pools.contains(&name.as_str()))
        .flat_map(|(name, p)| p.servers.iter().map(|s| (name.clone(), s.name.clone())))
        .collect()
}

/// What this node publishes that comes from its config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Local {
    /// The cluster-relevant config.
    pub fingerprint: Fingerprint,
    /// The listeners' rules.
    pub rules: Vec<ListenerRule>,
    /// Load weight per listener.
    pub weights: BTreeMap<String, u32>,
    /// `min_members`.
    pub min_members: usize,
}

impl Local {
    /// From a whole config.
    pub fn of(cfg: &convoy_config::Config) -> Local {
        let c = cfg.cluster.as_ref();
        Local {
            fingerprint: Fingerprint::of(cfg),
            rules: cfg
                .listeners
                .iter()
                .map(|l| ListenerRule {
                    name: l.name.clone(),
                    single: l.mode == convoy_config::FilterMode::Single,
                    servers: servers_of(cfg, l),
                })
                .collect(),
            weights: cfg
                .listeners
                .iter()
                .map(|l| (l.name.clone(), c.map_or(100, |c| c.weight_of(&l.name))))
                .collect(),
            min_members: c.map_or(0, |c| c.min_members),
        }
    }
}

/// What the control plane tells the agent.
#[derive(Debug)]
pub enum Input {
    /// The config changed (a reload).
    Config(Local),
    /// The servers this node sees down now, as (pool, server).
    Down(Vec<(String, String)>),
    /// This node drains (hands its flows over), or stops draining.
    Draining(bool),
    /// This node's open connections.
    Connections(u64),
    /// An operator command for the whole cluster; the answer is its stamp.
    Command {
        /// Target, e.g. `server/web/a`.
        target: String,
        /// Value, e.g. `drain`.
        value: String,
        /// Where the stamp goes.
        reply: oneshot::Sender<Stamp>,
    },
    /// What clients did on this node since the last time (rate-limit
    /// tokens spent, affinity entries made or used), for every member.
    Usage(Vec<Usage>),
    /// Leave the cluster (a stop); answered once the goodbye went out.
    Leave(oneshot::Sender<()>),
}

/// One listener's client usage on one node, exchanged every tick so that
/// per-client limits and affinity hold over the whole cluster.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Listener name.
    pub listener: String,
    /// Rate-limit tokens spent per client address.
    pub spent: Vec<(std::net::IpAddr, u32)>,
    /// Affinity entries made or used: client key → server name.
    pub sticky: Vec<(u64, String)>,
}

/// Cuts usage into parts that each fit a datagram (an entry that alone
/// would not, such as an affinity entry with a very long server name, is
/// left out).
fn usage_parts(u: &[Usage]) -> Vec<Usage> {
    let mut out = Vec::new();
    for l in u {
        let empty = Usage {
            listener: l.listener.clone(),
            ..Usage::default()
        };
        let mut cur = empty.clone();
        let fits = |u: &Usage| postcard::to_allocvec(u).is_ok_and(|b| b.len() <= MAX_PAYLOAD);
        for s in &l.spent {
            cur.spent.push(*s);
            if !fits(&cur) {
                cur.spent.pop();
                out.push(std::mem::replace(&mut cur, empty.clone()));
                cur.spent.push(*s);
            }
        }
        for s in &l.sticky {
            cur.sticky.push(s.clone());
            if !fits(&cur) {
                cur.sticky.pop();
                if !cur.spent.is_empty() || !cur.sticky.is_empty() {
                    out.push(std::mem::replace(&mut cur, empty.clone()));
                }
                cur.sticky.push(s.clone());
                if !fits(&cur) {
                    cur.sticky.pop();
                }
            }
        }
        if !cur.spent.is_empty() || !cur.sticky.is_empty() {
            out.push(cur);
        }
    }
    out
}

/// Counters for metrics.
#[derive(Debug, Default)]
pub struct Stats {
    /// Datagrams refused, by reason (malformed, foreign, bad tag, replay,
    /// own id).
    pub refused: [AtomicU64; 5],
    /// Bytes received and sent on the cluster socket.
    pub bytes_in: AtomicU64,
    /// Bytes sent.
    pub bytes_out: AtomicU64,
    /// Convergences of this node.
    pub convergences: AtomicU64,
    /// Their durations in milliseconds (the last 256).
    pub convergence_ms: Mutex<Vec<u64>>,
    /// When each member's doc last arrived, by name.
    pub heard: Mutex<HashMap<String, Instant>>,
    /// Other members' usage, waiting for the control plane (bounded).
    pub inbox: Mutex<Vec<Usage>>,
}

impl Stats {
    /// Takes the other members' usage received since the last call.
    pub fn take_usage(&self) -> Vec<Usage> {
        std::mem::take(&mut *self.inbox.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl Stats {
    /// Index of a refusal reason in `refused`.
    pub fn reason_index(r: Refused) -> usize {
        match r {
            Refused::Malformed => 0,
            Refused::Foreign => 1,
            Refused::BadTag => 2,
            Refused::Replay => 3,
            Refused::Own => 4,
        }
    }

    /// The reasons, in `refused` order.
    pub const REASONS: [&'static str; 5] = ["malformed", "foreign", "bad_tag", "replay", "own_id"];
}

/// The agent's end held by the control plane.
#[derive(Debug, Clone)]
pub struct Handle {
    /// The latest view.
    pub view: watch::Receiver<Arc<View>>,
    /// To the agent.
    pub tx: mpsc::UnboundedSender<Input>,
    /// Counters.
    pub stats: Arc<Stats>,
    /// This node's name.
    pub name: String,
    task: tokio::task::AbortHandle,
}

impl Handle {
    /// Stops the agent at once, with no goodbye (as a crash would; a
    /// stop says goodbye with [`Input::Leave`]).
    pub fn abort(&self) {
        self.task.abort();
    }
}

/// Binds the cluster socket and starts the agent.
pub async fn start(s: Settings, local: Local) -> std::io::Result<Handle> {
    let sock = UdpSocket::bind(s.address).await?;
    let epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let id = Id {
        addr: s.address,
        name: s.name.clone(),
        epoch,
        bump: 0,
    };
    let sender =
        convoy_balance::hash::hash64(format!("{}@{}", s.name, s.address).as_bytes(), 0x636c);
    let me = NodeDoc {
        name: s.name.clone(),
        priority: s.priority,
        epoch,
        version: 1,
        state: MemberState::Converging,
        fingerprint: local.fingerprint.clone(),
        weights: local.weights.clone(),
        down: Vec::new(),
        view: 0,
        commands: Commands::default(),
        connections: 0,
    };
    let rng: rand::rngs::StdRng = rand::make_rng();
    let foca = Foca::new(id, foca_config(&s), rng, PostcardCodec);
    let view = Arc::new(view::compute(
        &me,
        s.address,
        &[],
        local.min_members,
        &local.rules,
        None,
    ));
    let (view_tx, view_rx) = watch::channel(Arc::clone(&view));
    let (tx, rx) = mpsc::unbounded_channel();
    let stats = Arc::new(Stats::default());
    let agent = Agent {
        env: Envelope::new(&s.key, sender, epoch),
        foca,
        rt: AccumulatingRuntime::new(),
        timers: BTreeMap::new(),
        seq: 0,
        sock,
        me,
        local,
        docs: HashMap::new(),
        pieces: Assembler::default(),
        view,
        view_tx,
        states: BTreeMap::new(),
        converging_since: Some(Instant::now()),
        stats: Arc::clone(&stats),
        last_refusal_log: None,
        settings: s,
        dirty: true,
        usage_out: Vec::new(),
        out: Vec::with_capacity(MAX_DATAGRAM),
    };
    let name = agent.settings.name.clone();
    let task = tokio::spawn(agent.run(rx)).abort_handle();
    Ok(Handle {
        view: view_rx,
        tx,
        stats,
        name,
        task,
    })
}

/// Membership settings for detection within about a second: a probe
/// every `probe_interval`, an answer expected within half of it, two
/// indirect probes, then `suspicion` to refute before down; gossip twice
/// per probe interval; down members are announced to every few seconds,
/// so a split cluster heals by itself.
fn foca_config(s: &Settings) -> foca::Config {
    let p = |frequency: Duration, n: usize| {
        Some(foca::PeriodicParams {
            frequency,
            num_members: NonZeroUsize::new(n).expect("not zero"),
        })
    };
    foca::Config {
        probe_period: s.probe_interval,
        probe_rtt: s.probe_interval / 2,
        num_indirect_probes: NonZeroUsize::new(2).expect("not zero"),
        max_transmissions: NonZeroU8::new(6).expect("not zero"),
        suspect_to_down_after: s.suspicion,
        remove_down_after: Some(Duration::from_secs(60)),
        max_packet_size: NonZeroUsize::new(MAX_PAYLOAD).expect("not zero"),
        notify_down_members: true,
        periodic_announce: p(Duration::from_secs(5), 1),
        periodic_announce_to_down_members: p(Duration::from_secs(2), 2),
        periodic_gossip: p(s.probe_interval / 2, 3),
    }
}

const KIND_FOCA: u8 = 0;
const KIND_DOC: u8 = 1;
const KIND_USAGE: u8 = 2;

struct Agent {
    settings: Settings,
    env: Envelope,
    foca: Foca<Id, PostcardCodec, rand::rngs::StdRng, NoCustomBroadcast>,
    rt: AccumulatingRuntime<Id>,
    timers: BTreeMap<(Instant, u64), Timer<Id>>,
    seq: u64,
    sock: UdpSocket,
    me: NodeDoc,
    local: Local,
    /// Docs of other members by (name, epoch).
    docs: HashMap<(String, u64), NodeDoc>,
    pieces: Assembler,
    view: Arc<View>,
    view_tx: watch::Sender<Arc<View>>,
    /// Member states as last logged.
    states: BTreeMap<String, MemberState>,
    converging_since: Option<Instant>,
    stats: Arc<Stats>,
    last_refusal_log: Option<Instant>,
    /// This node's doc changed since it was last pushed to every member.
    dirty: bool,
    /// Usage to send to every member.
    usage_out: Vec<Usage>,
    out: Vec<u8>,
}

impl Agent {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Input>) {
        for seed in self.settings.seeds.clone() {
            let _ = self.foca.announce(self.seed_id(seed), &mut self.rt);
        }
        self.flush().await;
        let mut second = tokio::time::interval(Duration::from_secs(1));
        let mut buf = vec![0u8; MAX_DATAGRAM + 1];
        loop {
            let next = self.timers.keys().next().map(|(at, _)| *at);
            tokio::select! {
                r = self.sock.recv_from(&mut buf) => match r {
                    Ok((n, from)) => self.datagram(&buf[..n], from),
                    Err(e) => warn!(event = "cluster_socket_error", error = %e),
                },
                _ = async { tokio::time::sleep_until(next.unwrap_or_else(Instant::now)).await }, if next.is_some() => {
                    self.due_timers();
                }
                input = rx.recv() => match input {
                    Some(Input::Leave(done)) => {
                        self.leave().await;
                        let _ = done.send(());
                        return;
                    }
                    Some(i) => self.input(i),
                    // The control plane is gone: leave quietly.
                    None => {
                        self.leave().await;
                        return;
                    }
                },
                _ = second.tick() => self.every_second().await,
            }
            self.flush().await;
        }
    }

    /// An identity that foca accepts an announce for: only its address
    /// counts.
    fn seed_id(&self, addr: SocketAddr) -> Id {
        Id {
            addr,
            name: String::new(),
            epoch: 0,
            bump: 0,
        }
    }

    fn datagram(&mut self, d: &[u8], from: SocketAddr) {
        self.stats
            .bytes_in
            .fetch_add(d.len() as u64, Ordering::Relaxed);
        let opened = match self.env.open(d) {
            Ok(o) => o,
            Err(r) => {
                self.stats.refused[Stats::reason_index(r)].fetch_add(1, Ordering::Relaxed);
                let now = Instant::now();
                if self
                    .last_refusal_log
                    .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1))
                {
                    self.last_refusal_log = Some(now);
                    warn!(event = "cluster_refused", from = %from, reason = %r, "cluster datagram refused");
                }
                return;
            }
        };
        match opened.kind {
            KIND_FOCA => {
                let _ = self.foca.handle_data(opened.payload, &mut self.rt);
            }
            KIND_DOC => {
                let (sender, epoch) = (opened.sender, opened.epoch);
                let payload = opened.payload.to_vec();
                self.piece(sender, epoch, &payload);
            }
            KIND_USAGE => {
                if let Ok(u) = postcard::from_bytes::<Usage>(opened.payload) {
                    let mut inbox = self.stats.inbox.lock().unwrap_or_else(|e| e.into_inner());
                    if inbox.len() < 4096 {
                        inbox.push(u);
                    }
                }
            }
            _ => {}
        }
    }

    /// A piece of a member's doc; the doc is taken when whole.
    fn piece(&mut self, sender: u64, epoch: u64, p: &[u8]) {
        let Some(doc) = self.pieces.piece(sender, epoch, p) else {
            return;
        };
        let key = (doc.name.clone(), doc.epoch);
        if self
            .docs
            .get(&key)
            .is_some_and(|d| d.version >= doc.version)
        {
            return;
        }
        self.stats
            .heard
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(doc.name.clone(), Instant::now());
        if self.me.commands.merge(&doc.commands) {
            self.touch();
        }
        self.docs.insert(key, doc);
        self.recompute();
    }

    fn due_timers(&mut self) {
        let now = Instant::now();
        while let Some(entry) = self.timers.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let t = entry.remove();
            let _ = self.foca.handle_timer(t, &mut self.rt);
        }
    }

    fn input(&mut self, i: Input) {
        match i {
            Input::Config(l) => {
                if l != self.local {
                    self.me.fingerprint = l.fingerprint.clone();
                    self.me.weights = l.weights.clone();
                    self.local = l;
                    self.touch();
                }
            }
            Input::Down(mut d) => {
                d.sort();
                d.dedup();
                if d != self.me.down {
                    self.me.down = d;
                    self.touch();
                }
            }
            Input::Draining(on) => {
                let want = if on {
                    MemberState::Draining
                } else {
                    MemberState::Converging
                };
                if (self.me.state == MemberState::Draining) != on {
                    self.me.state = want;
                    self.touch();
                }
            }
            Input::Connections(n) => self.me.connections = n,
            Input::Command {
                target,
                value,
                reply,
            } => {
                let ms = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64)
                    .max(self.view.commands.latest_ms() + 1);
                let stamp = Stamp {
                    ms,
                    node: self.me.name.clone(),
                };
                self.me.commands.set(&target, &value, stamp.clone());
                self.touch();
                let _ = reply.send(stamp);
            }
            Input::Usage(u) => {
                self.usage_out.extend(usage_parts(&u));
                return;
            }
            Input::Leave(_) => {}
        }
        self.recompute();
    }

    /// This node's doc changed: a new version for every member.
    fn touch(&mut self) {
        self.me.version += 1;
        self.dirty = true;
    }

    async fn every_second(&mut self) {
        let members: Vec<Id> = self.foca.iter_members().map(|m| m.id().clone()).collect();
        if members.is_empty() {
            // Alone: knock at the seeds again (they may have started
            // later, or a split healed).
            for seed in self.settings.seeds.clone() {
                let _ = self.foca.announce(self.seed_id(seed), &mut self.rt);
            }
        }
        // Anti-entropy: the doc to a few members at random, with the
        // latest connection count.
        self.me.version += 1;
        let mut pick = members;
        pick.shuffle(&mut rand::rng());
        pick.truncate(3);
        for id in pick {
            self.push_doc(id.addr).await;
        }
    }

    /// Sends what foca queued, schedules its timers, handles its
    /// notifications, and pushes this node's doc when it changed.
    async fn flush(&mut self) {
        while let Some((to, data)) = self.rt.to_send() {
            self.env.seal(KIND_FOCA, &data, &mut self.out);
            self.send(to.addr).await;
        }
        let now = Instant::now();
        while let Some((after, t)) = self.rt.to_schedule() {
            self.seq += 1;
            self.timers.insert((now + after, self.seq), t);
        }
        let mut changed = false;
        let mut joined = Vec::new();
        while let Some(n) = self.rt.to_notify() {
            match n {
                OwnedNotification::MemberUp(id) => {
                    joined.push(id.addr);
                    changed = true;
                }
                OwnedNotification::MemberDown(id) => {
                    self.docs.remove(&(id.name.clone(), id.epoch));
                    changed = true;
                }
                OwnedNotification::Rename(_, _) | OwnedNotification::Rejoin(_) => changed = true,
                // Taken for dead by the others: rejoin with a new identity.
                OwnedNotification::Defunct if self.foca.reuse_down_identity().is_ok() => {
                    warn!(
                        event = "cluster_rejoin",
                        "this node was taken for dead: rejoining"
                    );
                }
                _ => {}
            }
        }
        if changed {
            self.converging_since.get_or_insert_with(Instant::now);
            self.recompute();
        }
        for addr in joined {
            self.push_doc(addr).await;
        }
        if !self.usage_out.is_empty() {
            let members: Vec<SocketAddr> = self.foca.iter_members().map(|m| m.id().addr).collect();
            for u in std::mem::take(&mut self.usage_out) {
                let Ok(bytes) = postcard::to_allocvec(&u) else {
                    continue;
                };
                if bytes.len() > MAX_PAYLOAD {
                    continue;
                }
                for addr in &members {
                    self.env.seal(KIND_USAGE, &bytes, &mut self.out);
                    self.send(*addr).await;
                }
            }
        }
        if self.dirty {
            self.dirty = false;
            let members: Vec<SocketAddr> = self.foca.iter_members().map(|m| m.id().addr).collect();
            for addr in members {
                self.push_doc(addr).await;
            }
        }
    }

    /// Sends this node's doc to `addr`, in pieces.
    async fn push_doc(&mut self, addr: SocketAddr) {
        let pieces = cut(&self.me);
        if pieces.is_empty() {
            warn!(
                event = "cluster_doc_too_large",
                "this node's doc does not fit in the pieces allowed"
            );
        }
        for p in pieces {
            self.env.seal(KIND_DOC, &p, &mut self.out);
            self.send(addr).await;
        }
    }

    async fn send(&mut self, to: SocketAddr) {
        if self.sock.send_to(&self.out, to).await.is_ok() {
            self.stats
                .bytes_out
                .fetch_add(self.out.len() as u64, Ordering::Relaxed);
        }
    }

    /// Computes the view again, settles this node's own published state
    /// and view of the members, logs changes and publishes the view.
    fn recompute(&mut self) {
        let mut v = self.compute();
        // What this node publishes follows what it computes: its view of
        // the live members and its own state (unless it drains).
        for _ in 0..2 {
            let own = v.state.unwrap_or(MemberState::Converging);
            let publish_state = if self.me.state == MemberState::Draining {
                MemberState::Draining
            } else {
                own
            };
            if self.me.view == v.live && self.me.state == publish_state {
                break;
            }
            self.me.view = v.live;
            self.me.state = publish_state;
            self.touch();
            v = self.compute();
        }
        self.log_changes(&v);
        if *self.view != v {
            self.view = Arc::new(v);
            self.view_tx.send_replace(Arc::clone(&self.view));
        }
    }

    fn compute(&self) -> View {
        let peers: Vec<Peer> = self
            .foca
            .iter_members()
            .map(|m| {
                let id = m.id();
                Peer {
                    addr: id.addr,
                    doc: self.docs.get(&(id.name.clone(), id.epoch)).cloned(),
                }
            })
            .collect();
        let mut me = self.me.clone();
        if me.state != MemberState::Draining {
            me.state = MemberState::Converging;
        }
        view::compute(
            &me,
            self.settings.address,
            &peers,
            self.local.min_members,
            &self.local.rules,
            Some(&self.view),
        )
    }

    /// Logs every member state change, and this node's convergences.
    fn log_changes(&mut self, v: &View) {
        let now: BTreeMap<String, MemberState> = v
            .members
            .iter()
            .map(|m| (m.name.clone(), m.state))
            .collect();
        for (name, was) in &self.states {
            if !now.contains_key(name) && *was != MemberState::Left {
                info!(event = "cluster_member", member = %name, from = was.as_str(), to = "left", me = false);
            }
        }
        for m in &v.members {
            let was = self.states.get(&m.name).copied();
            if was != Some(m.state) {
                info!(
                    event = "cluster_member",
                    member = %m.name,
                    from = was.map_or("none", MemberState::as_str),
                    to = m.state.as_str(),
                    me = m.me
                );
                if m.me && m.state == MemberState::Mismatched {
                    warn!(event = "cluster_mismatched", differs = %v.differs.join(", "), "this node's config differs from the majority's: it takes no flows");
                }
                if m.me && m.state == MemberState::Conflict {
                    warn!(event = "cluster_conflict", name = %m.name, priority = m.priority, "another node with this name or priority started first: this one takes no flows");
                }
            }
        }
        self.states = now;
        match (v.state, self.converging_since) {
            (Some(MemberState::Converged), Some(since)) => {
                let ms = since.elapsed().as_millis() as u64;
                self.converging_since = None;
                self.stats.convergences.fetch_add(1, Ordering::Relaxed);
                let mut d = self
                    .stats
                    .convergence_ms
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                if d.len() >= 256 {
                    d.remove(0);
                }
                d.push(ms);
                info!(
                    event = "cluster_converged",
                    duration_ms = ms,
                    members = v.members.len(),
                    candidates = v.candidates.len()
                );
            }
            (Some(MemberState::Converging), None) => self.converging_since = Some(Instant::now()),
            _ => {}
        }
    }

    /// Says goodbye: foca's leave, and a last doc that says `left`.
    async fn leave(&mut self) {
        self.me.state = MemberState::Left;
        self.touch();
        let _ = self.foca.leave_cluster(&mut self.rt);
        self.flush().await;
        info!(event = "cluster_left", "left the cluster");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    const KEY: &[u8] = b"the cluster key of the unit tests";

    fn free_udp() -> SocketAddr {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        s.local_addr().unwrap()
    }

    fn local(fp: u64) -> Local {
        let mut f = Fingerprint::default();
        f.sections.insert("pools.p".into(), fp);
        Local {
            fingerprint: f,
            rules: vec![ListenerRule {
                name: "web".into(),
                single: false,
                servers: Vec::new(),
            }],
            weights: BTreeMap::new(),
            min_members: 0,
        }
    }

    async fn node(
        name: &str,
        priority: u32,
        addr: SocketAddr,
        seeds: &[SocketAddr],
        key: &[u8],
        fp: u64,
    ) -> Handle {
        let s = Settings {
            name: name.into(),
            priority,
            address: addr,
            seeds: seeds.to_vec(),
            key: key.to_vec(),
            probe_interval: Duration::from_millis(100),
            suspicion: Duration::from_millis(200),
        };
        start(s, local(fp)).await.unwrap()
    }

    /// Waits (at most 10 s) until `f` holds for the node's view.
    async fn until(h: &Handle, what: &str, f: impl Fn(&View) -> bool) {
        let mut rx = h.view.clone();
        let ok = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                if f(&rx.borrow_and_update()) {
                    return;
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
        assert!(ok.is_ok(), "{}: {what}: {:?}", h.name, *h.view.borrow());
    }

    fn converged_with(n: usize) -> impl Fn(&View) -> bool {
        move |v: &View| v.state == Some(MemberState::Converged) && v.candidates.len() == n
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn three_nodes_converge_share_commands_and_lose_a_dead_one() {
        let (a, b, c) = (free_udp(), free_udp(), free_udp());
        let na = node("a", 1, a, &[], KEY, 7).await;
        let nb = node("b", 2, b, &[a], KEY, 7).await;
        let nc = node("c", 3, c, &[a], KEY, 7).await;
        for n in [&na, &nb, &nc] {
            until(n, "three converged", converged_with(3)).await;
        }
        // Every node computes the same owners.
        let owners = na.view.borrow().owners.clone();
        assert_eq!(nb.view.borrow().owners, owners);
        assert_eq!(nc.view.borrow().owners, owners);
        // A command given on one node reaches every node.
        let (tx, rx) = oneshot::channel();
        nb.tx
            .send(Input::Command {
                target: "server/p/s1".into(),
                value: "drain".into(),
                reply: tx,
            })
            .unwrap();
        rx.await.unwrap();
        for n in [&na, &nc] {
            until(n, "the command", |v| {
                v.commands.get("server/p/s1") == Some("drain")
            })
            .await;
        }
        // Health: down for the cluster once two of three see it down.
        let s1 = ("p".to_string(), "s1".to_string());
        na.tx.send(Input::Down(vec![s1.clone()])).unwrap();
        nb.tx.send(Input::Down(vec![s1.clone()])).unwrap();
        until(&nc, "s1 down", |v| v.down.contains(&s1)).await;
        // A node killed: the others take it for gone and converge on two.
        nc.abort();
        for n in [&na, &nb] {
            until(n, "two converged", converged_with(2)).await;
            assert!(!n.view.borrow().members.iter().any(|m| m.name == "c"));
        }
        assert_eq!(na.view.borrow().owners, nb.view.borrow().owners);
        assert!(na.stats.convergences.load(Ordering::Relaxed) >= 2);
        // It comes back (same name and address, a new start): its doc is
        // taken at once, though its versions start again (a regression:
        // its pieces were held for older than the dead process's).
        tokio::time::sleep(Duration::from_millis(50)).await;
        let nc = node("c", 3, c, &[a], KEY, 7).await;
        let back = tokio::time::timeout(Duration::from_secs(4), async {
            for n in [&na, &nb, &nc] {
                until(n, "three again", converged_with(3)).await;
            }
        })
        .await;
        assert!(back.is_ok(), "{:?}", *na.view.borrow());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_node_without_the_key_cannot_join_and_an_odd_config_is_isolated() {
        let (a, b, x, d) = (free_udp(), free_udp(), free_udp(), free_udp());
        let na = node("a", 1, a, &[], KEY, 7).await;
        let _nb = node("b", 2, b, &[a], KEY, 7).await;
        let intruder = node("x", 9, x, &[a], b"not the key, but long enough too!", 7).await;
        until(&na, "two converged", converged_with(2)).await;
        // Its announces are refused and counted; it never appears.
        let refused =
            || na.stats.refused[Stats::reason_index(Refused::BadTag)].load(Ordering::Relaxed);
        let t0 = Instant::now();
        while refused() == 0 && t0.elapsed() < Duration::from_secs(5) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(refused() > 0);
        assert!(na.view.borrow().members.iter().all(|m| m.name != "x"));
        assert_eq!(intruder.view.borrow().members.len(), 1, "it sees nobody");
        // A node whose config differs: mismatched, no flows; the others
        // go on.
        let nd = node("d", 4, d, &[a], KEY, 8).await;
        until(&nd, "mismatched", |v| {
            v.state == Some(MemberState::Mismatched)
        })
        .await;
        until(&na, "d mismatched", |v| {
            v.members
                .iter()
                .any(|m| m.name == "d" && m.state == MemberState::Mismatched)
                && v.state == Some(MemberState::Converged)
        })
        .await;
        assert_eq!(nd.view.borrow().differs, ["pools.p"]);
        let cands: BTreeSet<String> = na.view.borrow().candidates.iter().cloned().collect();
        assert_eq!(cands, ["a", "b"].into_iter().map(String::from).collect());
    }
}
