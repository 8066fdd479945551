//! Idle connections parked outside any task.
//!
//! A keep-alive connection that has waited a while for its next request
//! does not need a task, a timer and a registered waker of its own: a
//! [`Lot`] keeps it as a plain record (its socket, out of tokio's reactor,
//! and what the owner needs to go on) in one epoll set of its own (`mio`),
//! watched by one task per lot (the epoll set is itself in tokio's
//! reactor). The connection gets a task again when
//! its socket becomes readable, when its deadline passes, or when the lot
//! is stopped (graceful stop: the owner's own code then winds it down);
//! the owner closes the ones a kill concerns ([`Lot::take_where`]).
//!
//! A parked connection costs its record and a place in the epoll set
//! instead of a task (the connection's future, tokio's task header, its
//! timer and its waiters); parking and waking cost four `epoll_ctl`
//! calls per socket and a new task, so owners park only connections
//! idle for some time.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io;
use std::os::fd::RawFd;
use std::sync::{Arc, Mutex};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use slab::Slab;
use std::time::Duration;
use tokio::io::unix::AsyncFd;
use tokio::sync::watch;
use tokio::time::Instant;

/// Why a parked connection was handed back to its owner.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wake {
    /// One of its sockets became readable (data, end of stream or error).
    Readable,
    /// Its deadline passed.
    Expired,
    /// The lot stopped (graceful stop): the owner winds it down.
    Stopped,
}

/// The token of the lot's own waker (slab keys never reach it).
const WAKER: Token = Token(usize::MAX);

/// A parked connection's record.
struct Slot<T> {
    item: T,
    /// Its sockets (-1: none).
    fds: [RawFd; 2],
    id: u64,
}

struct State<T> {
    slots: Slab<Slot<T>>,
    /// Deadlines, earliest first; an entry whose slot is gone (or was
    /// reused: other id) is skipped.
    deadlines: BinaryHeap<Reverse<(Instant, u64, usize)>>,
    next_id: u64,
    /// Stopped: takes no more, hands every one back, the watcher ends.
    stopped: bool,
}

struct Inner<T> {
    registry: mio::Registry,
    waker: mio::Waker,
    state: Mutex<State<T>>,
}

/// A set of parked connections (records of type `T`). Cloning gives
/// another handle to the same lot.
pub struct Lot<T> {
    inner: Arc<Inner<T>>,
}

impl<T> Clone for Lot<T> {
    fn clone(&self) -> Self {
        Lot {
            inner: Arc::clone(&self.inner),
        }
    }
}

/// The lot's own part: the epoll set its task waits on
/// ([`Watcher::spawn`]).
pub struct Watcher<T> {
    inner: Arc<Inner<T>>,
    poll: Poll,
}

impl<T> Inner<T> {
    fn lock(&self) -> std::sync::MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes a slot out of the lot and its sockets out of the epoll set.
    fn take(&self, st: &mut State<T>, key: usize) -> Option<T> {
        let slot = st.slots.try_remove(key)?;
        for fd in slot.fds.iter().filter(|fd| **fd >= 0) {
            let _ = self.registry.deregister(&mut SourceFd(fd));
        }
        Some(slot.item)
    }
}

impl<T: Send + 'static> Lot<T> {
    /// A new lot, and the watcher whose task watches it.
    pub fn new() -> io::Result<(Lot<T>, Watcher<T>)> {
        let poll = Poll::new()?;
        let inner = Arc::new(Inner {
            registry: poll.registry().try_clone()?,
            waker: mio::Waker::new(poll.registry(), WAKER)?,
            state: Mutex::new(State {
                slots: Slab::new(),
                deadlines: BinaryHeap::new(),
                next_id: 0,
                stopped: false,
            }),
        });
        Ok((
            Lot {
                inner: Arc::clone(&inner),
            },
            Watcher { inner, poll },
        ))
    }

    /// Parks `item`, whose sockets are `fds` (one or two, already out of
    /// tokio's reactor), until one is readable or `deadline` passes.
    /// `Err(item)` when the lot takes no more (stopped) or the
    /// sockets cannot be watched: the caller keeps serving it.
    pub fn park(&self, item: T, fds: &[RawFd], deadline: Instant) -> Result<(), T> {
        self.park_if(item, fds, deadline, |_| true)
    }

    /// [`Lot::park`], if `keep` says so under the lot's lock: a check
    /// that cannot miss a [`Lot::take_where`] made at the same time (a
    /// kill signal seen before the item is parked refuses it; one seen
    /// after finds it parked).
    pub fn park_if(
        &self,
        item: T,
        fds: &[RawFd],
        deadline: Instant,
        keep: impl FnOnce(&T) -> bool,
    ) -> Result<(), T> {
        let mut st = self.inner.lock();
        if st.stopped || fds.is_empty() || fds.len() > 2 || !keep(&item) {
            return Err(item);
        }
        let key = st.slots.vacant_key();
        for (i, fd) in fds.iter().enumerate() {
            let r = self
                .inner
                .registry
                .register(&mut SourceFd(fd), Token(key), Interest::READABLE);
            if r.is_err() {
                for fd in &fds[..i] {
                    let _ = self.inner.registry.deregister(&mut SourceFd(fd));
                }
                return Err(item);
            }
        }
        let id = st.next_id;
        st.next_id += 1;
        let mut slot_fds = [-1; 2];
        slot_fds[..fds.len()].copy_from_slice(fds);
        st.slots.insert(Slot {
            item,
            fds: slot_fds,
            id,
        });
        let earliest = st
            .deadlines
            .peek()
            .is_none_or(|Reverse((d, _, _))| deadline < *d);
        st.deadlines.push(Reverse((deadline, id, key)));
        drop(st);
        if earliest {
            // The watcher may be sleeping until a later deadline.
            let _ = self.inner.waker.wake();
        }
        Ok(())
    }

    /// Graceful stop: every parked connection is handed back with
    /// [`Wake::Stopped`], the lot takes no more and its watcher ends.
    pub fn stop(&self) {
        self.inner.lock().stopped = true;
        let _ = self.inner.waker.wake();
    }

    /// Takes out every parked connection `pick` chooses (out of the
    /// epoll set, not handed back: the caller winds them down).
    pub fn take_where(&self, mut pick: impl FnMut(&T) -> bool) -> Vec<T> {
        let mut st = self.inner.lock();
        let keys: Vec<usize> = st
            .slots
            .iter()
            .filter(|(_, s)| pick(&s.item))
            .map(|(k, _)| k)
            .collect();
        keys.into_iter()
            .filter_map(|k| self.inner.take(&mut st, k))
            .collect()
    }

    /// How many connections are parked.
    pub fn len(&self) -> usize {
        self.inner.lock().slots.len()
    }

    /// Whether none is parked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<T: Send + 'static> Watcher<T> {
    /// Watches the lot until it is stopped, as a task on the current
    /// runtime: `resume` gets each connection handed back (it should
    /// spawn the work, not do it). The lot's epoll set is itself watched
    /// by tokio's reactor, so a wake is a task switch on the same thread,
    /// not a hand-off between threads, and the process gains no thread
    /// (glibc's system-call wrappers cost more in a process with two).
    /// Ends after [`Lot::stop`], handing every parked connection back.
    pub fn spawn<R>(self, resume: R) -> io::Result<tokio::task::JoinHandle<()>>
    where
        R: FnMut(T, Wake) + Send + 'static,
    {
        let Watcher { inner, poll } = self;
        // Deprecated for descriptors an owner may close or swap; `Poll`
        // owns its epoll descriptor for its whole life, so this one holds.
        #[allow(deprecated)]
        let afd = AsyncFd::with_interest(poll, tokio::io::Interest::READABLE)?;
        Ok(tokio::spawn(run(inner, afd, resume)))
    }
}

/// The watcher's loop.
async fn run<T, R: FnMut(T, Wake)>(inner: Arc<Inner<T>>, mut afd: AsyncFd<Poll>, mut resume: R) {
    let mut events = Events::with_capacity(256);
    loop {
        let stopped = inner.lock().stopped;
        if stopped {
            return close(&inner, Wake::Stopped, &mut resume);
        }
        let next = inner.lock().deadlines.peek().map(|Reverse((d, _, _))| *d);
        let due = async {
            match next {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = afd.readable() => match r {
                // Cleared before the epoll set is read: an event after
                // that read wakes the next wait.
                Ok(mut guard) => guard.clear_ready(),
                Err(e) => {
                    tracing::warn!(error = %e, "parked connections: the wait failed; all handed back");
                    inner.lock().stopped = true;
                    return close(&inner, Wake::Stopped, &mut resume);
                }
            },
            () = due => {}
        }
        // Everything ready now, without blocking.
        loop {
            if let Err(e) = afd.get_mut().poll(&mut events, Some(Duration::ZERO)) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                tracing::warn!(error = %e, "parked connections: the wait failed; all handed back");
                inner.lock().stopped = true;
                return close(&inner, Wake::Stopped, &mut resume);
            }
            let full = events.iter().count() == events.capacity();
            for ev in events.iter() {
                if ev.token() == WAKER {
                    continue;
                }
                let item = inner.take(&mut inner.lock(), ev.token().0);
                if let Some(item) = item {
                    resume(item, Wake::Readable);
                }
            }
            if !full {
                break;
            }
        }
        let now = Instant::now();
        loop {
            let item = {
                let mut st = inner.lock();
                match st.deadlines.peek() {
                    Some(Reverse((d, _, _))) if *d <= now => {}
                    _ => break,
                }
                let Some(Reverse((_, id, key))) = st.deadlines.pop() else {
                    break;
                };
                if st.slots.get(key).is_none_or(|s| s.id != id) {
                    continue;
                }
                inner.take(&mut st, key)
            };
            if let Some(item) = item {
                resume(item, Wake::Expired);
            }
        }
        // Deadlines of connections that woke first are dropped now
        // and then, so the heap stays about the size of the lot.
        let mut st = inner.lock();
        if st.deadlines.len() > 2 * st.slots.len() + 64 {
            let State {
                slots, deadlines, ..
            } = &mut *st;
            deadlines.retain(|Reverse((_, id, key))| slots.get(*key).is_some_and(|s| s.id == *id));
        }
        // After a burst, the room it took is given back (the slab only
        // down to its highest key in use).
        if st.slots.capacity() > 4 * st.slots.len() + 256 {
            st.slots.shrink_to_fit();
            let keep = 2 * st.slots.len() + 64;
            st.deadlines.shrink_to(keep);
        }
    }
}

/// A listener's lot and its watcher, if it parks (`park_after`): the lot
/// with the park time (for the listener's connections) and the watcher
/// (to spawn). A lot that cannot be made is logged: the listener then
/// does not park.
pub type ForListener<T> = (Option<(Lot<T>, std::time::Duration)>, Option<Watcher<T>>);

/// [`ForListener`] for the listener `name`.
pub fn for_listener<T: Send + 'static>(
    name: &str,
    park_after: Option<std::time::Duration>,
) -> ForListener<T> {
    let Some(after) = park_after else {
        return (None, None);
    };
    match Lot::new() {
        Ok((lot, watcher)) => (Some((lot, after)), Some(watcher)),
        Err(e) => {
            tracing::warn!(listener = %name, error = %e, "idle connections will not be parked");
            (None, None)
        }
    }
}

/// Calls `on_change` each time one of `signals` changes (the kill
/// signals a lot's owner watches for its parked connections), until
/// `stop` turns true or a signal's sender is gone. Changes count from
/// this call, not from the first poll.
pub fn on_signals(
    mut signals: Vec<watch::Receiver<u64>>,
    mut stop: watch::Receiver<bool>,
    mut on_change: impl FnMut() + Send,
) -> impl std::future::Future<Output = ()> + Send {
    for s in signals.iter_mut() {
        s.mark_unchanged();
    }
    async move {
        loop {
            let changed = {
                let any = async {
                    if signals.is_empty() {
                        std::future::pending::<()>().await;
                    }
                    let changes = signals.iter_mut().map(|s| Box::pin(s.changed()));
                    futures_util::future::select_all(changes).await.0.is_ok()
                };
                tokio::select! {
                    ok = any => ok,
                    _ = stop.wait_for(|s| *s) => false,
                }
            };
            if !changed {
                return;
            }
            on_change();
        }
    }
}

/// Empties a lot: each connection handed back with `why`.
fn close<T>(inner: &Inner<T>, why: Wake, resume: &mut impl FnMut(T, Wake)) {
    let items: Vec<T> = {
        let mut st = inner.lock();
        st.deadlines.clear();
        let keys: Vec<usize> = st.slots.iter().map(|(k, _)| k).collect();
        keys.into_iter()
            .filter_map(|k| inner.take(&mut st, k))
            .collect()
    };
    for item in items {
        resume(item, why);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsRawFd;
    use std::sync::mpsc;
    use std::time::Duration;

    fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (b, _) = l.accept().unwrap();
        b.set_nonblocking(true).unwrap();
        (a, b)
    }

    /// Runs a lot whose resumed items go to a channel.
    type Woken = mpsc::Receiver<(u32, Wake)>;

    fn lot() -> (Lot<(u32, TcpStream)>, Woken) {
        let (lot, watcher) = Lot::new().unwrap();
        let (tx, rx) = mpsc::channel();
        watcher
            .spawn(move |(n, _s): (u32, TcpStream), why| {
                tx.send((n, why)).unwrap();
            })
            .unwrap();
        (lot, rx)
    }

    async fn next(rx: &Woken) -> (u32, Wake) {
        for _ in 0..500 {
            if let Ok(v) = rx.try_recv() {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("nothing was resumed in 5 s");
    }

    #[tokio::test]
    async fn a_readable_socket_is_handed_back_and_only_it() {
        let (lot, rx) = lot();
        let far = Instant::now() + Duration::from_secs(60);
        let (mut a1, b1) = pair();
        let (_a2, b2) = pair();
        let fd1 = b1.as_raw_fd();
        let fd2 = b2.as_raw_fd();
        lot.park((1, b1), &[fd1], far).map_err(|_| ()).unwrap();
        lot.park((2, b2), &[fd2], far).map_err(|_| ()).unwrap();
        assert_eq!(lot.len(), 2);
        a1.write_all(b"GET").unwrap();
        assert_eq!(next(&rx).await, (1, Wake::Readable));
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(rx.try_recv().is_err(), "the quiet socket was handed back");
        assert_eq!(lot.len(), 1);
    }

    #[tokio::test]
    async fn data_already_waiting_wakes_at_once_and_a_close_wakes_too() {
        let (lot, rx) = lot();
        let far = Instant::now() + Duration::from_secs(60);
        let (mut a1, b1) = pair();
        a1.write_all(b"x").unwrap();
        std::thread::sleep(Duration::from_millis(20));
        let fd = b1.as_raw_fd();
        lot.park((1, b1), &[fd], far).map_err(|_| ()).unwrap();
        assert_eq!(next(&rx).await, (1, Wake::Readable));
        let (a2, b2) = pair();
        let fd = b2.as_raw_fd();
        lot.park((2, b2), &[fd], far).map_err(|_| ()).unwrap();
        drop(a2);
        assert_eq!(next(&rx).await, (2, Wake::Readable));
    }

    #[tokio::test]
    async fn deadlines_expire_in_order_even_when_parked_out_of_order() {
        let (lot, rx) = lot();
        let now = Instant::now();
        let (_a1, b1) = pair();
        let (_a2, b2) = pair();
        let (fd1, fd2) = (b1.as_raw_fd(), b2.as_raw_fd());
        lot.park((1, b1), &[fd1], now + Duration::from_millis(400))
            .map_err(|_| ())
            .unwrap();
        lot.park((2, b2), &[fd2], now + Duration::from_millis(150))
            .map_err(|_| ())
            .unwrap();
        assert_eq!(next(&rx).await, (2, Wake::Expired));
        assert!(now.elapsed() >= Duration::from_millis(150));
        assert_eq!(next(&rx).await, (1, Wake::Expired));
        assert!(now.elapsed() >= Duration::from_millis(400));
    }

    #[tokio::test]
    async fn a_burst_leaves_no_room_behind_once_woken() {
        let (lot, rx) = lot();
        let at = Instant::now() + Duration::from_millis(100);
        let mut peers = Vec::new();
        for n in 0..400 {
            let (a, b) = pair();
            let fd = b.as_raw_fd();
            lot.park((n, b), &[fd], at).map_err(|_| ()).unwrap();
            peers.push(a);
        }
        assert!(lot.inner.lock().slots.capacity() >= 400);
        for _ in 0..400 {
            assert_eq!(next(&rx).await.1, Wake::Expired);
        }
        // The watcher shrinks the lot right after handing them back.
        let mut cap = usize::MAX;
        for _ in 0..100 {
            cap = lot.inner.lock().slots.capacity();
            if cap < 400 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(cap < 400, "the slab kept room for {cap}");
    }

    #[tokio::test]
    async fn either_of_two_sockets_wakes_a_pair() {
        let (lot, rx) = lot();
        let far = Instant::now() + Duration::from_secs(60);
        let (_a1, b1) = pair();
        let (mut a2, b2) = pair();
        let fds = [b1.as_raw_fd(), b2.as_raw_fd()];
        let item = (7, b1);
        lot.park(item, &fds, far).map_err(|_| ()).unwrap();
        a2.write_all(b"y").unwrap();
        assert_eq!(next(&rx).await, (7, Wake::Readable));
        drop(b2);
    }

    #[tokio::test]
    async fn a_stop_hands_every_one_back_and_parks_no_more() {
        let (lot, rx) = lot();
        let far = Instant::now() + Duration::from_secs(60);
        let mut keep = Vec::new();
        for n in 0..3 {
            let (a, b) = pair();
            let fd = b.as_raw_fd();
            lot.park((n, b), &[fd], far).map_err(|_| ()).unwrap();
            keep.push(a);
        }
        lot.stop();
        let mut got: Vec<u32> = Vec::new();
        for _ in 0..3 {
            let (n, why) = next(&rx).await;
            assert_eq!(why, Wake::Stopped);
            got.push(n);
        }
        got.sort();
        assert_eq!(got, [0, 1, 2]);
        let (_a, b) = pair();
        let fd = b.as_raw_fd();
        assert!(lot.park((9, b), &[fd], far).is_err());
    }

    #[tokio::test]
    async fn take_where_takes_only_the_chosen_and_park_if_can_refuse() {
        let (lot, rx) = lot();
        let far = Instant::now() + Duration::from_secs(60);
        let mut peers = Vec::new();
        for n in 0..4 {
            let (a, b) = pair();
            let fd = b.as_raw_fd();
            lot.park((n, b), &[fd], far).map_err(|_| ()).unwrap();
            peers.push(a);
        }
        let mut taken: Vec<u32> = lot
            .take_where(|(n, _)| n % 2 == 1)
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        taken.sort();
        assert_eq!(taken, [1, 3]);
        assert_eq!(lot.len(), 2);
        // Taken ones are out of the epoll set: their data wakes nothing.
        peers[1].write_all(b"q").unwrap();
        peers[0].write_all(b"q").unwrap();
        assert_eq!(next(&rx).await, (0, Wake::Readable));
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(rx.try_recv().is_err(), "a taken connection was handed back");
        let (_a, b) = pair();
        let fd = b.as_raw_fd();
        let refused = lot.park_if((9, b), &[fd], far, |(n, _)| *n != 9);
        assert!(matches!(refused, Err((9, _))));
        assert_eq!(lot.len(), 1);
    }

    #[tokio::test]
    async fn on_signals_calls_back_per_change_until_stopped() {
        let (k1, r1) = watch::channel(0u64);
        let (k2, r2) = watch::channel(0u64);
        let (stop_tx, stop) = watch::channel(false);
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let c = Arc::clone(&calls);
        let task = tokio::spawn(on_signals(vec![r1, r2], stop, move || {
            c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }));
        let count = || calls.load(std::sync::atomic::Ordering::SeqCst);
        k2.send_modify(|v| *v += 1);
        for _ in 0..100 {
            if count() == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(count(), 1);
        k1.send_modify(|v| *v += 1);
        for _ in 0..100 {
            if count() == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(count(), 2);
        stop_tx.send_replace(true);
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("ends when stopped")
            .unwrap();
        assert_eq!(count(), 2);
    }

    #[tokio::test]
    async fn connections_taken_out_are_closed_when_dropped_and_the_lot_goes_on() {
        let (lot, rx) = lot();
        let far = Instant::now() + Duration::from_secs(60);
        let (mut a, b) = pair();
        let fd = b.as_raw_fd();
        lot.park((1, b), &[fd], far).map_err(|_| ()).unwrap();
        drop(lot.take_where(|_| true));
        a.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 8];
        let n = tokio::task::spawn_blocking(move || a.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(n, 0, "the client sees the connection closed");
        assert!(rx.try_recv().is_err());
        assert!(lot.is_empty());
        // The lot goes on parking.
        let (mut a, b) = pair();
        let fd = b.as_raw_fd();
        lot.park((2, b), &[fd], far).map_err(|_| ()).unwrap();
        a.write_all(b"z").unwrap();
        assert_eq!(next(&rx).await, (2, Wake::Readable));
    }
}
