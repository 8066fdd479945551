//! Seamless binary upgrade: a new convoy process takes over the listening
//! sockets of the running one over a unix socket (`node.upgrade_socket`),
//! with the descriptors passed as SCM_RIGHTS. No socket is ever closed and
//! rebound, so no connection is refused. This module owns both sides of
//! the protocol (the old process's listener, the new process's
//! [`take_over`]) and what the node hands over: its sockets
//! (`sockets_for_upgrade`), its state (`handover_state`, taken over by
//! `take_handed_state`) and, while the old process drains, its load
//! (`own_load`, counted by the new process with `take_foreign_load`).
//!
//! 1. The running node listens on `node.upgrade_socket`.
//! 2. `convoy run -c FILE --upgrade` connects and sends `TAKEOVER\n`.
//! 3. The old node answers with batches of `[u32 length][JSON]` frames,
//!    each carrying up to 200 descriptors: every listening socket
//!    (TCP, UDP) and the admin API's socket, described in the JSON by kind
//!    and address, in the order of the descriptors.
//! 4. The new node builds its listeners on those sockets (binding only
//!    what is new), starts serving, and sends `READY\n`.
//!    The last frame also carries the node's state: its serving state,
//!    the operator's changes (admin states, weights, route classes) and
//!    each server's live state (health, latency EWMA, error rate,
//!    ejection, slow start), which the new node takes over before it
//!    serves.
//! 5. The old node then drain-stops: it stops accepting (the sockets stay
//!    open in the new process), lets its connections finish and exits.
//!    If the new process fails before `READY`, the old one carries on.
//! 6. While it drains, the old node sends a line of JSON every 100 ms with
//!    what it still has in flight on each server (`{"load":[[pool,
//!    server, requests, cost], ...]}`): the new node counts those requests
//!    against the servers' high-water marks and loads until the line
//!    stops (the old process exited), so no server gets more than its
//!    `max_in_flight` across the two processes.

use std::collections::HashMap;
use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use convoy_core::Snapshot;
use rustix::net::{
    recvmsg, sendmsg, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tracing::{error, info, warn};

use crate::apply::Overrides;
use crate::error::{report, Error};
use crate::node::{Node, NodeState};

/// Descriptors per message (the kernel allows 253).
const BATCH: usize = 200;

/// What a passed descriptor is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A TCP listening socket (TCP and HTTP listeners).
    Tcp,
    /// A UDP socket.
    Udp,
    /// The admin API's listening socket.
    Admin,
}

#[derive(Debug, Serialize, Deserialize)]
struct Frame {
    entries: Vec<(Kind, SocketAddr)>,
    last: bool,
    /// The node's state (last frame only).
    #[serde(default)]
    state: Option<serde_json::Value>,
}

/// Sockets received from the old process, taken as the new node binds.
#[derive(Debug, Default)]
pub struct Inherited {
    socks: HashMap<(Kind, SocketAddr), OwnedFd>,
    conn: Option<UnixStream>,
    state: Option<serde_json::Value>,
}

impl Inherited {
    /// The inherited socket of `kind` bound to `addr`, if any.
    pub(crate) fn take(&mut self, kind: Kind, addr: SocketAddr) -> Option<OwnedFd> {
        self.socks.remove(&(kind, addr))
    }

    /// The inherited admin socket, whatever its address (a node has one).
    pub(crate) fn take_admin(&mut self) -> Option<(SocketAddr, OwnedFd)> {
        let key = self
            .socks
            .keys()
            .find(|(k, _)| *k == Kind::Admin)
            .copied()?;
        self.socks.remove(&key).map(|fd| (key.1, fd))
    }

    /// The state the old node handed over.
    pub(crate) fn take_state(&mut self) -> Option<serde_json::Value> {
        self.state.take()
    }

    /// Tells the old process that this one serves; it then drain-stops.
    /// Sockets the new config did not use are closed. What the old
    /// process still has in flight is passed to `on_load` as it reports
    /// it, and once more with an empty list when it has exited.
    pub(crate) fn ready(
        &mut self,
        on_load: impl Fn(&[(String, String, u64, u64)]) + Send + 'static,
    ) {
        self.socks.clear();
        if let Some(mut c) = self.conn.take() {
            if let Err(e) = c.write_all(b"READY\n") {
                warn!(event = "upgrade_ready_failed", error = %e, "could not tell the old process");
                return;
            }
            std::thread::spawn(move || {
                use std::io::BufRead;
                let mut r = std::io::BufReader::new(c);
                let mut line = String::new();
                loop {
                    line.clear();
                    match r.read_line(&mut line) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    }
                    if let Ok(u) = serde_json::from_str::<LoadLine>(&line) {
                        on_load(&u.load);
                    }
                }
                on_load(&[]);
            });
        }
    }

    /// Sockets received but not used by the new config.
    pub(crate) fn unused(&self) -> usize {
        self.socks.len()
    }
}

/// New process: asks the running node at `path` for its sockets.
pub fn take_over(path: &Path) -> Result<Inherited, Error> {
    let mut c = UnixStream::connect(path).map_err(|e| {
        Error::io(
            format!(
                "upgrade: cannot reach the running node at {}",
                path.display()
            ),
            e,
        )
    })?;
    c.set_read_timeout(Some(Duration::from_secs(10)))?;
    c.write_all(b"TAKEOVER\n")?;
    let mut inh = Inherited::default();
    loop {
        let (frame, fds) = recv_frame(&c)?;
        if frame.entries.len() != fds.len() {
            return Err(Error::Protocol(format!(
                "upgrade: {} sockets described, {} received",
                frame.entries.len(),
                fds.len()
            )));
        }
        for (e, fd) in frame.entries.into_iter().zip(fds) {
            inh.socks.insert(e, fd);
        }
        if frame.last {
            inh.state = frame.state;
            break;
        }
    }
    c.set_read_timeout(None)?;
    inh.conn = Some(c);
    Ok(inh)
}

fn recv_frame(c: &UnixStream) -> Result<(Frame, Vec<OwnedFd>), Error> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(BATCH))];
    let mut anc = RecvAncillaryBuffer::new(&mut space);
    let got = {
        let mut iov = [IoSliceMut::new(&mut buf)];
        recvmsg(c, &mut iov, &mut anc, RecvFlags::CMSG_CLOEXEC)
            .map_err(|e| Error::io("upgrade: receiving sockets", e))?
            .bytes
    };
    let mut fds = Vec::new();
    for m in anc.drain() {
        if let RecvAncillaryMessage::ScmRights(it) = m {
            fds.extend(it);
        }
    }
    if got < 4 {
        return Err(protocol("upgrade: the running node closed the connection"));
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if len > buf.len() - 4 {
        return Err(Error::Protocol(format!(
            "upgrade: frame of {len} bytes is too large"
        )));
    }
    let mut have = got;
    // The rest of a long frame may come in later reads (no descriptors).
    let mut r = c;
    while have < 4 + len {
        let n = r.read(&mut buf[have..4 + len])?;
        if n == 0 {
            return Err(protocol("upgrade: connection closed mid-frame"));
        }
        have += n;
    }
    let frame: Frame = serde_json::from_slice(&buf[4..4 + len]).map_err(Error::Frame)?;
    Ok((frame, fds))
}

fn send_frames(
    c: &UnixStream,
    socks: &[(Kind, SocketAddr, OwnedFd)],
    state: serde_json::Value,
) -> Result<(), Error> {
    let chunks: Vec<&[(Kind, SocketAddr, OwnedFd)]> = if socks.is_empty() {
        vec![&[]]
    } else {
        socks.chunks(BATCH).collect()
    };
    let n = chunks.len();
    for (i, chunk) in chunks.into_iter().enumerate() {
        let last = i + 1 == n;
        let frame = Frame {
            entries: chunk.iter().map(|(k, a, _)| (*k, *a)).collect(),
            last,
            state: last.then(|| state.clone()),
        };
        let json = serde_json::to_vec(&frame)?;
        let mut data = (json.len() as u32).to_be_bytes().to_vec();
        data.extend_from_slice(&json);
        let fds: Vec<std::os::fd::BorrowedFd<'_>> = chunk
            .iter()
            .map(|(_, _, fd)| std::os::fd::AsFd::as_fd(fd))
            .collect();
        let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(BATCH))];
        let mut anc = SendAncillaryBuffer::new(&mut space);
        if !fds.is_empty() && !anc.push(SendAncillaryMessage::ScmRights(&fds)) {
            return Err(protocol("upgrade: descriptor batch does not fit"));
        }
        let sent = sendmsg(c, &[IoSlice::new(&data)], &mut anc, SendFlags::empty())
            .map_err(std::io::Error::from)?;
        let mut w = c;
        w.write_all(&data[sent..])?;
    }
    Ok(())
}

/// Old process: a request for the node's sockets, answered by the control
/// loop with duplicates of every listening descriptor and the node's
/// state.
pub(crate) type SocketsRequest =
    oneshot::Sender<(Vec<(Kind, SocketAddr, OwnedFd)>, serde_json::Value)>;

/// One line of what the old process still has in flight.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct LoadLine {
    /// (pool, server, requests in flight, their cost).
    pub(crate) load: Vec<(String, String, u64, u64)>,
}

/// What the upgrade listener tells the control loop.
#[derive(Debug)]
pub(crate) enum UpgradeMsg {
    /// A new process wants the sockets.
    Sockets(SocketsRequest),
    /// The new process serves: drain-stop and exit.
    HandedOver,
    /// What this process still has in flight (for the new process).
    Load(oneshot::Sender<LoadLine>),
}

/// Binds the upgrade socket at `path`, replacing a stale file (one no
/// process listens on any more).
pub(crate) fn bind(path: &Path) -> Result<tokio::net::UnixListener, Error> {
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            return Err(Error::UpgradeSocketInUse(path.to_path_buf()));
        }
        let _ = std::fs::remove_file(path);
    }
    let l = tokio::net::UnixListener::bind(path).map_err(|e| {
        Error::io(
            format!("cannot bind the upgrade socket {}", path.display()),
            e,
        )
    })?;
    restrict(path)?;
    Ok(l)
}

/// Only the owner may connect: whoever can connect can take the node's
/// sockets and make it exit.
pub(crate) fn restrict(path: &Path) -> Result<(), Error> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(|e| {
        Error::io(
            format!("cannot restrict the upgrade socket {}", path.display()),
            e,
        )
    })
}

/// Old process: serves takeover requests on `l` until one succeeds.
pub(crate) async fn serve(l: tokio::net::UnixListener, tx: mpsc::Sender<UpgradeMsg>) {
    loop {
        let Ok((s, _)) = l.accept().await else {
            continue;
        };
        let (reply, rx) = oneshot::channel();
        if tx.send(UpgradeMsg::Sockets(reply)).await.is_err() {
            return;
        }
        let Ok((socks, state)) = rx.await else {
            return;
        };
        let count = socks.len();
        let std = match s.into_std() {
            Ok(s) => s,
            Err(e) => {
                error!(event = "upgrade_failed", error = %e);
                continue;
            }
        };
        let res = tokio::task::spawn_blocking(move || hand_over(std, &socks, state)).await;
        match res {
            Ok(Ok(std)) => {
                info!(
                    event = "upgrade_handover",
                    sockets = count,
                    "the new process serves: draining this one"
                );
                let _ = tx.send(UpgradeMsg::HandedOver).await;
                report_load(std, tx).await;
                return;
            }
            Ok(Err(e)) => {
                error!(event = "upgrade_failed", error = %report(&e), "takeover failed: this process carries on");
            }
            Err(e) => error!(event = "upgrade_failed", error = %e),
        }
    }
}

/// Old process, one takeover: reads the request, sends the sockets and
/// the state, and waits for the new process to serve.
fn hand_over(
    std: UnixStream,
    socks: &[(Kind, SocketAddr, OwnedFd)],
    state: serde_json::Value,
) -> Result<UnixStream, Error> {
    std.set_nonblocking(false)?;
    std.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut line = [0u8; 9];
    (&std).read_exact(&mut line)?;
    if &line != b"TAKEOVER\n" {
        return Err(protocol("unexpected request"));
    }
    send_frames(&std, socks, state)?;
    // The new process may take a while to start serving.
    std.set_read_timeout(Some(Duration::from_secs(120)))?;
    let mut ready = [0u8; 6];
    (&std).read_exact(&mut ready)?;
    if &ready != b"READY\n" {
        return Err(protocol("the new process did not confirm"));
    }
    Ok(std)
}

fn protocol(msg: &str) -> Error {
    Error::Protocol(msg.to_string())
}

/// Old process, after the handover: tells the new process every 100 ms
/// what this one still has in flight, until the new process goes away or
/// this one exits (which closes the connection).
async fn report_load(std: UnixStream, tx: mpsc::Sender<UpgradeMsg>) {
    use tokio::io::AsyncWriteExt;
    if std.set_nonblocking(true).is_err() {
        return;
    }
    let Ok(mut c) = tokio::net::UnixStream::from_std(std) else {
        return;
    };
    loop {
        let (reply, rx) = oneshot::channel();
        if tx.send(UpgradeMsg::Load(reply)).await.is_err() {
            return;
        }
        let Ok(load) = rx.await else {
            return;
        };
        let Ok(mut line) = serde_json::to_vec(&load) else {
            return;
        };
        line.push(b'\n');
        if c.write_all(&line).await.is_err() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

impl Node {
    /// A message of the upgrade listener.
    pub(crate) fn on_upgrade(&mut self, m: UpgradeMsg) {
        match m {
            UpgradeMsg::Sockets(reply) => {
                let _ = reply.send((self.sockets_for_upgrade(), self.handover_state()));
            }
            UpgradeMsg::Load(reply) => {
                let _ = reply.send(self.own_load());
            }
            UpgradeMsg::HandedOver => {
                self.begin_drainstop("upgrade", true);
                self.leave_cluster_for_upgrade();
            }
        }
    }

    /// Duplicates of every listening socket and of the admin socket, for
    /// a new process taking over.
    fn sockets_for_upgrade(&self) -> Vec<(Kind, SocketAddr, OwnedFd)> {
        use crate::listeners::Bound;
        use std::os::fd::AsFd;
        let mut out = Vec::new();
        for l in &self.listeners {
            match &l.sockets {
                Bound::Tcp(v) => {
                    for s in v {
                        if let (Ok(a), Ok(fd)) = (s.local_addr(), s.as_fd().try_clone_to_owned()) {
                            out.push((Kind::Tcp, a, fd));
                        }
                    }
                }
                Bound::Udp(v) => {
                    for s in v {
                        if let (Ok(a), Ok(fd)) = (s.local_addr(), s.as_fd().try_clone_to_owned()) {
                            out.push((Kind::Udp, a, fd));
                        }
                    }
                }
            }
        }
        if let Some((a, fd)) = &self.admin_fd {
            if let Ok(fd) = fd.try_clone() {
                out.push((Kind::Admin, *a, fd));
            }
        }
        out
    }

    /// What a process taking over needs: the serving state, the
    /// operator's changes and every server's live state.
    fn handover_state(&self) -> serde_json::Value {
        let snap = self.snap();
        let servers: Vec<serde_json::Value> = snap
            .pools
            .values()
            .flat_map(|p| {
                p.servers
                    .iter()
                    .map(move |s| serde_json::json!([p.name, s.cfg.name, s.state.handover()]))
            })
            .collect();
        serde_json::json!({
            "state": self.state.as_str(),
            "overrides": self.overrides.to_json(),
            "servers": servers,
        })
    }

    /// What this process has in flight on each server (for the process
    /// that took over).
    fn own_load(&self) -> LoadLine {
        let snap = self.snap();
        let mut load = Vec::new();
        for p in snap.pools.values() {
            for s in &p.servers {
                let (n, cost) = s.state.own_load();
                if n > 0 {
                    load.push((p.name.clone(), s.cfg.name.clone(), n, cost));
                }
            }
        }
        LoadLine { load }
    }

    /// New process, once it serves: tells the old one (which then
    /// drain-stops), counts its load, takes its serving state, and binds
    /// the upgrade socket for the next upgrade.
    pub(crate) fn finish_takeover(
        &mut self,
        handed: Option<&serde_json::Value>,
        upgrade_tx: &mpsc::Sender<UpgradeMsg>,
    ) {
        let unused = self.inherited.unused();
        let snap = Arc::clone(&self.snapshot);
        self.inherited
            .ready(move |load| take_foreign_load(&snap, load));
        match handed.and_then(|h| h["state"].as_str()) {
            Some("stopped") => {
                self.stop_listeners();
                self.state = NodeState::Stopped;
                info!(
                    event = "stopped",
                    by = "upgrade",
                    "the previous process was stopped: so is this one"
                );
            }
            Some("suspended") => {
                self.stop_listeners();
                self.state = NodeState::Suspended;
                warn!(
                    event = "suspended",
                    by = "upgrade",
                    "the previous process was suspended: so is this one"
                );
            }
            _ => {}
        }
        info!(
            event = "upgrade_took_over",
            unused_sockets = unused,
            "serving on the sockets of the previous process"
        );
        if let Some(p) = &self.snap().config.node.upgrade_socket {
            // The old process's upgrade socket is no longer needed: take
            // the path over for the next upgrade.
            let _ = std::fs::remove_file(p);
            match tokio::net::UnixListener::bind(p) {
                Ok(l) => {
                    if let Err(e) = restrict(p) {
                        warn!(event = "upgrade_socket_error", error = %report(&e));
                    }
                    tokio::spawn(serve(l, upgrade_tx.clone()));
                }
                Err(e) => warn!(event = "upgrade_socket_error", path = %p.display(), error = %e),
            }
        }
    }
}

/// The operator's changes the previous process handed over.
pub(crate) fn handed_overrides(handed: Option<&serde_json::Value>) -> Overrides {
    handed
        .map(|h| Overrides::from_json(&h["overrides"]))
        .unwrap_or_default()
}

/// Takes over the live state of every server the previous process
/// handed over (health, latency, errors, ejection, slow start).
pub(crate) fn take_handed_state(snapshot: &ArcSwap<Snapshot>, handed: &serde_json::Value) {
    let snap = snapshot.load();
    let mut taken = 0;
    for row in handed["servers"].as_array().into_iter().flatten() {
        let (Some(p), Some(s)) = (row[0].as_str(), row[1].as_str()) else {
            continue;
        };
        let Ok(state) = serde_json::from_value::<convoy_core::state::Handover>(row[2].clone())
        else {
            continue;
        };
        if let Some(sv) = snap.pools.get(p).and_then(|pool| pool.server(s)) {
            sv.state.take_over(&state);
            taken += 1;
        }
    }
    for p in snap.pools.values() {
        p.rebuild();
    }
    info!(
        event = "upgrade_state_taken_over",
        servers = taken,
        "server states, operator changes and node state of the previous process"
    );
}

/// Counts what the replaced process still has in flight on each server;
/// servers it no longer lists have nothing there. Queued requests are
/// woken where load went down.
fn take_foreign_load(snap: &ArcSwap<Snapshot>, load: &[(String, String, u64, u64)]) {
    let by: HashMap<(&str, &str), (u64, u64)> = load
        .iter()
        .map(|(p, s, n, c)| ((p.as_str(), s.as_str()), (*n, *c)))
        .collect();
    let snap = snap.load();
    for p in snap.pools.values() {
        let mut lower = false;
        for s in &p.servers {
            let (n, c) = by
                .get(&(p.name.as_str(), s.cfg.name.as_str()))
                .copied()
                .unwrap_or((0, 0));
            let before = s.state.in_flight();
            s.state.set_foreign_load(n, c);
            lower |= s.state.in_flight() < before;
        }
        if lower {
            p.wake_any();
        }
    }
}
