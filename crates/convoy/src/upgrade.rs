//! Seamless binary upgrade: a new convoy process takes over the listening
//! sockets of the running one over a unix socket (`node.upgrade_socket`),
//! with the descriptors passed as SCM_RIGHTS. No socket is ever closed and
//! rebound, so no connection is refused.
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
use std::time::Duration;

use anyhow::{bail, Context as _};
use rustix::net::{
    recvmsg, sendmsg, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tracing::{error, info, warn};

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
    pub fn take(&mut self, kind: Kind, addr: SocketAddr) -> Option<OwnedFd> {
        self.socks.remove(&(kind, addr))
    }

    /// The inherited admin socket, whatever its address (a node has one).
    pub fn take_admin(&mut self) -> Option<(SocketAddr, OwnedFd)> {
        let key = self
            .socks
            .keys()
            .find(|(k, _)| *k == Kind::Admin)
            .copied()?;
        self.socks.remove(&key).map(|fd| (key.1, fd))
    }

    /// The state the old node handed over.
    pub fn take_state(&mut self) -> Option<serde_json::Value> {
        self.state.take()
    }

    /// Tells the old process that this one serves; it then drain-stops.
    /// Sockets the new config did not use are closed. What the old
    /// process still has in flight is passed to `on_load` as it reports
    /// it, and once more with an empty list when it has exited.
    pub fn ready(&mut self, on_load: impl Fn(&[(String, String, u64, u64)]) + Send + 'static) {
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
    pub fn unused(&self) -> usize {
        self.socks.len()
    }
}

/// New process: asks the running node at `path` for its sockets.
pub fn take_over(path: &Path) -> anyhow::Result<Inherited> {
    let mut c = UnixStream::connect(path).with_context(|| {
        format!(
            "upgrade: cannot reach the running node at {}",
            path.display()
        )
    })?;
    c.set_read_timeout(Some(Duration::from_secs(10)))?;
    c.write_all(b"TAKEOVER\n")?;
    let mut inh = Inherited::default();
    loop {
        let (frame, fds) = recv_frame(&c)?;
        if frame.entries.len() != fds.len() {
            bail!(
                "upgrade: {} sockets described, {} received",
                frame.entries.len(),
                fds.len()
            );
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

fn recv_frame(c: &UnixStream) -> anyhow::Result<(Frame, Vec<OwnedFd>)> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(BATCH))];
    let mut anc = RecvAncillaryBuffer::new(&mut space);
    let got = {
        let mut iov = [IoSliceMut::new(&mut buf)];
        recvmsg(c, &mut iov, &mut anc, RecvFlags::CMSG_CLOEXEC)
            .context("upgrade: receiving sockets")?
            .bytes
    };
    let mut fds = Vec::new();
    for m in anc.drain() {
        if let RecvAncillaryMessage::ScmRights(it) = m {
            fds.extend(it);
        }
    }
    if got < 4 {
        bail!("upgrade: the running node closed the connection");
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if len > buf.len() - 4 {
        bail!("upgrade: frame of {len} bytes is too large");
    }
    let mut have = got;
    // The rest of a long frame may come in later reads (no descriptors).
    let mut r = c;
    while have < 4 + len {
        let n = r.read(&mut buf[have..4 + len])?;
        if n == 0 {
            bail!("upgrade: connection closed mid-frame");
        }
        have += n;
    }
    let frame: Frame = serde_json::from_slice(&buf[4..4 + len]).context("upgrade: bad frame")?;
    Ok((frame, fds))
}

fn send_frames(
    c: &UnixStream,
    socks: &[(Kind, SocketAddr, OwnedFd)],
    state: serde_json::Value,
) -> anyhow::Result<()> {
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
            bail!("upgrade: descriptor batch does not fit");
        }
        let sent = sendmsg(c, &[IoSlice::new(&data)], &mut anc, SendFlags::empty())?;
        let mut w = c;
        w.write_all(&data[sent..])?;
    }
    Ok(())
}

/// Old process: a request for the node's sockets, answered by the control
/// loop with duplicates of every listening descriptor and the node's
/// state.
pub type SocketsRequest = oneshot::Sender<(Vec<(Kind, SocketAddr, OwnedFd)>, serde_json::Value)>;

/// One line of what the old process still has in flight.
#[derive(Debug, Serialize, Deserialize)]
pub struct LoadLine {
    /// (pool, server, requests in flight, their cost).
    pub load: Vec<(String, String, u64, u64)>,
}

/// What the upgrade listener tells the control loop.
#[derive(Debug)]
pub enum UpgradeMsg {
    /// A new process wants the sockets.
    Sockets(SocketsRequest),
    /// The new process serves: drain-stop and exit.
    HandedOver,
    /// What this process still has in flight (for the new process).
    Load(oneshot::Sender<LoadLine>),
}

/// Binds the upgrade socket at `path`, replacing a stale file (one no
/// process listens on any more).
pub fn bind(path: &Path) -> anyhow::Result<tokio::net::UnixListener> {
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            bail!(
                "upgrade socket {} is in use by a running node (to replace it, start the new one with --upgrade)",
                path.display()
            );
        }
        let _ = std::fs::remove_file(path);
    }
    let l = tokio::net::UnixListener::bind(path)
        .with_context(|| format!("cannot bind the upgrade socket {}", path.display()))?;
    restrict(path)?;
    Ok(l)
}

/// Only the owner may connect: whoever can connect can take the node's
/// sockets and make it exit.
pub fn restrict(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot restrict the upgrade socket {}", path.display()))
}

/// Old process: serves takeover requests on `l` until one succeeds.
pub async fn serve(l: tokio::net::UnixListener, tx: mpsc::Sender<UpgradeMsg>) {
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
        let res = tokio::task::spawn_blocking(move || -> anyhow::Result<UnixStream> {
            std.set_nonblocking(false)?;
            std.set_read_timeout(Some(Duration::from_secs(10)))?;
            let mut line = [0u8; 9];
            (&std).read_exact(&mut line)?;
            if &line != b"TAKEOVER\n" {
                bail!("unexpected request");
            }
            send_frames(&std, &socks, state)?;
            // The new process may take a while to start serving.
            std.set_read_timeout(Some(Duration::from_secs(120)))?;
            let mut ready = [0u8; 6];
            (&std).read_exact(&mut ready)?;
            if &ready != b"READY\n" {
                bail!("the new process did not confirm");
            }
            Ok(std)
        })
        .await;
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
                error!(event = "upgrade_failed", error = %format!("{e:#}"), "takeover failed: this process carries on");
            }
            Err(e) => error!(event = "upgrade_failed", error = %e),
        }
    }
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
