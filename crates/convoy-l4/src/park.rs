//! Idle connections parked outside any task.
//!
//! A keep-alive connection that has waited a while for its next request
//! does not need a task, a timer and a registered waker of its own: a
//! [`Lot`] keeps it as a plain record (its socket, out of tokio's reactor,
//! and what the owner needs to go on) in one epoll set of its own, armed
//! one-shot for readability, watched by one task per lot (the epoll set
//! is itself in tokio's reactor). The connection gets a task again when
//! its socket becomes readable, when its deadline passes, or when the lot
//! is stopped (graceful stop: the owner's own code then winds it down);
//! the owner closes the ones a kill concerns ([`Lot::take_where`]).
//!
//! A parked connection costs its record and a place in the epoll set
//! instead of a task (the connection's future, tokio's task header, its
//! timer and its waiters, and tokio's registration of its socket);
//! parking costs two `epoll_ctl` per socket (tokio's removal, the lot's
//! arming) and waking one (tokio's) and a new task, so owners park only
//! connections idle for some time.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::{Arc, Mutex};

use rustix::event::epoll;
use slab::Slab;
use tokio::io::unix::AsyncFd;
use tokio::sync::{watch, Notify};
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

/// What a lot parks: a record holding one or two sockets.
pub trait Sockets {
    /// Its sockets: the first, and a second if it has one.
    fn sockets(&self) -> (BorrowedFd<'_>, Option<BorrowedFd<'_>>);
}

/// A parked connection's record.
struct Slot<T> {
    item: T,
    id: u64,
}

/// The epoll data of a slot's sockets: its key and the low half of its
/// id, so that an event for a slot since reused is told apart.
fn token(key: usize, id: u64) -> u64 {
    (u64::from(id as u32) << 32) | key as u64
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
    /// The lot's epoll set. A socket joins it once (and leaves it when
    /// closed) and is armed one-shot at each park: waking and parking
    /// again cost one `epoll_ctl` per socket, and the socket never
    /// leaves tokio's reactor.
    epoll: Arc<OwnedFd>,
    /// Wakes the watcher (stop, an earlier deadline).
    wake: Notify,
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
}

impl<T> Inner<T> {
    fn lock(&self) -> std::sync::MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes a slot out of the lot. Its sockets stay in the epoll set,
    /// disarmed once they fire (an event for a slot no longer there, or
    /// reused, is ignored), and leave it when closed. A pair woken by one
    /// socket leaves the other armed: if that one fires before the pair
    /// parks again (a TCP server's reply to the request that woke it), the
    /// watcher wakes once for an event it ignores. Disarming it on every
    /// wake would cost an `epoll_ctl` every time instead; not measured
    /// which is cheaper.
    fn take(&self, st: &mut State<T>, key: usize) -> Option<T> {
        st.slots.try_remove(key).map(|s| s.item)
    }
}

/// Arms `fd` one-shot in `ep` for readability with `data`: modified if
/// it is in the set already (parked before), added otherwise.
fn arm(ep: &OwnedFd, fd: BorrowedFd<'_>, data: u64) -> io::Result<()> {
    let flags = epoll::EventFlags::IN | epoll::EventFlags::RDHUP | epoll::EventFlags::ONESHOT;
    let data = epoll::EventData::new_u64(data);
    match epoll::modify(ep, fd, data, flags) {
        Err(rustix::io::Errno::NOENT) => Ok(epoll::add(ep, fd, data, flags)?),
        r => Ok(r?),
    }
}

impl<T: Sockets + Send + 'static> Lot<T> {
    /// A new lot, and the watcher whose task watches it.
    pub fn new() -> io::Result<(Lot<T>, Watcher<T>)> {
        let epoll = epoll::create(epoll::CreateFlags::CLOEXEC)?;
        let inner = Arc::new(Inner {
            epoll: Arc::new(epoll),
            wake: Notify::new(),
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
            Watcher { inner },
        ))
    }

    /// Parks `item` until one of its sockets is readable or `deadline`
    /// passes. `Err(item)` when the lot takes no more (stopped) or the
    /// sockets cannot be watched: the caller keeps serving it.
    pub fn park(&self, item: T, deadline: Instant) -> Result<(), T> {
        self.park_if(item, deadline, |_| true)
    }

    /// [`Lot::park`], if `keep` says so under the lot's lock: a check
    /// that cannot miss a [`Lot::take_where`] made at the same time (a
    /// kill signal seen before the item is parked refuses it; one seen
    /// after finds it parked).
    pub fn park_if(
        &self,
        item: T,
        deadline: Instant,
        keep: impl FnOnce(&T) -> bool,
    ) -> Result<(), T> {
        let mut st = self.inner.lock();
        if st.stopped || !keep(&item) {
            return Err(item);
        }
        let id = st.next_id;
        st.next_id += 1;
        let key = st.slots.insert(Slot { item, id });
        let data = token(key, id);
        let armed = {
            let (a, b) = st.slots[key].item.sockets();
            let ep = &*self.inner.epoll;
            arm(ep, a, data).and_then(|()| b.map_or(Ok(()), |b| arm(ep, b, data)))
        };
        if armed.is_err() {
            // One socket may be armed: its event finds no such slot.
            return Err(st.slots.remove(key).item);
        }
        let earliest = st
            .deadlines
            .peek()
            .is_none_or(|Reverse((d, _, _))| deadline < *d);
        st.deadlines.push(Reverse((deadline, id, key)));
        drop(st);
        if earliest {
            // The watcher may be sleeping until a later deadline.
            self.inner.wake.notify_one();
        }
        Ok(())
    }
}

impl<T> Lot<T> {
    /// Graceful stop: every parked connection is handed back with
    /// [`Wake::Stopped`], the lot takes no more and its watcher ends.
    pub fn stop(&self) {
        self.inner.lock().stopped = true;
        self.inner.wake.notify_one();
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

impl<T: Sockets + Send + 'static> Watcher<T> {
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
        let ep = Arc::clone(&self.inner.epoll);
        // Deprecated for descriptors an owner may close or swap; this one
        // is owned by the lot for its whole life, so it holds.
        #[allow(deprecated)]
        let afd = AsyncFd::with_interest(ep, tokio::io::Interest::READABLE)?;
        Ok(tokio::spawn(run(self.inner, afd, resume)))
    }
}

/// The watcher's loop.
async fn run<T, R: FnMut(T, Wake)>(
    inner: Arc<Inner<T>>,
    afd: AsyncFd<Arc<OwnedFd>>,
    mut resume: R,
) {
    let zero = rustix::event::Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
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
            () = inner.wake.notified() => {}
        }
        // Everything ready now, without blocking (the events are read
        // into the stack: nothing of them is kept across a wait).
        loop {
            let mut buf = [const { std::mem::MaybeUninit::<epoll::Event>::uninit() }; 64];
            let (events, _) = match epoll::wait(&*inner.epoll, &mut buf, Some(&zero)) {
                Ok(got) => got,
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "parked connections: the wait failed; all handed back");
                    inner.lock().stopped = true;
                    return close(&inner, Wake::Stopped, &mut resume);
                }
            };
            let full = events.len() == 64;
            for ev in events.iter() {
                let data = ev.data.u64();
                let key = (data & 0xffff_ffff) as usize;
                let item = {
                    let mut st = inner.lock();
                    let ours = st
                        .slots
                        .get(key)
                        .is_some_and(|s| s.id as u32 == (data >> 32) as u32);
                    if ours {
                        inner.take(&mut st, key)
                    } else {
                        None
                    }
                };
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
pub fn for_listener<T: Sockets + Send + 'static>(
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
/// `stop` turns true. A signal whose sender is gone counts as a change
/// once (the records that read a gone sender as a kill are taken out)
/// and is watched no more; the others still are. Changes count from this
/// call, not from the first poll.
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
            // Which signal moved, and whether its sender is gone.
            let moved = {
                let any = async {
                    if signals.is_empty() {
                        std::future::pending::<()>().await;
                    }
                    let changes = signals.iter_mut().map(|s| Box::pin(s.changed()));
                    let (r, i, _) = futures_util::future::select_all(changes).await;
                    Some((i, r.is_err()))
                };
                tokio::select! {
                    m = any => m,
                    _ = stop.wait_for(|s| *s) => None,
                }
            };
            let Some((i, gone)) = moved else {
                return;
            };
            if gone {
                signals.swap_remove(i);
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
    use std::os::fd::AsFd;
    use std::sync::mpsc;
    use std::time::Duration;

    fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (b, _) = l.accept().unwrap();
        b.set_nonblocking(true).unwrap();
        (a, b)
    }

    /// A test record: a number and one or two sockets.
    struct Rec(u32, TcpStream, Option<TcpStream>);

    impl Sockets for Rec {
        fn sockets(&self) -> (BorrowedFd<'_>, Option<BorrowedFd<'_>>) {
            (self.1.as_fd(), self.2.as_ref().map(|s| s.as_fd()))
        }
    }

    /// Runs a lot whose resumed items go to a channel.
    type Woken = mpsc::Receiver<(u32, Wake)>;

    fn lot() -> (Lot<Rec>, Woken) {
        let (lot, watcher) = Lot::new().unwrap();
        let (tx, rx) = mpsc::channel();
        watcher
            .spawn(move |r: Rec, why| {
                tx.send((r.0, why)).unwrap();
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
    async fn more_readable_at_once_than_one_wait_returns_are_all_handed_back() {
        // 100 records readable before the watcher runs (the test does not
        // yield while it writes): one read of the set returns 64 at most,
        // and the rest must not wait for some later event. (This kernel
        // signals the lot's epoll descriptor again while events remain, so
        // the watcher's own re-read of a full batch is not what this pins.)
        let (lot, rx) = lot();
        let far = Instant::now() + Duration::from_secs(60);
        let mut peers = Vec::new();
        for i in 0..100 {
            let (a, b) = pair();
            lot.park(Rec(i, b, None), far).map_err(|_| ()).unwrap();
            peers.push(a);
        }
        for a in peers.iter_mut() {
            a.write_all(b"x").unwrap();
        }
        let mut woken = Vec::new();
        for _ in 0..100 {
            let (i, why) = next(&rx).await;
            assert_eq!(why, Wake::Readable);
            woken.push(i);
        }
        woken.sort();
        assert_eq!(woken, (0..100).collect::<Vec<_>>());
        assert!(lot.is_empty());
    }

    #[tokio::test]
    async fn a_readable_socket_is_handed_back_and_only_it() {
        let (lot, rx) = lot();
        let far = Instant::now() + Duration::from_secs(60);
        let (mut a1, b1) = pair();
        let (_a2, b2) = pair();
        lot.park(Rec(1, b1, None), far).map_err(|_| ()).unwrap();
        lot.park(Rec(2, b2, None), far).map_err(|_| ()).unwrap();
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
        lot.park(Rec(1, b1, None), far).map_err(|_| ()).unwrap();
        assert_eq!(next(&rx).await, (1, Wake::Readable));
        let (a2, b2) = pair();
        lot.park(Rec(2, b2, None), far).map_err(|_| ()).unwrap();
        drop(a2);
        assert_eq!(next(&rx).await, (2, Wake::Readable));
    }

    #[tokio::test]
    async fn deadlines_expire_in_order_even_when_parked_out_of_order() {
        let (lot, rx) = lot();
        let now = Instant::now();
        let (_a1, b1) = pair();
        let (_a2, b2) = pair();
        lot.park(Rec(1, b1, None), now + Duration::from_millis(400))
            .map_err(|_| ())
            .unwrap();
        lot.park(Rec(2, b2, None), now + Duration::from_millis(150))
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
            lot.park(Rec(n, b, None), at).map_err(|_| ()).unwrap();
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
        lot.park(Rec(7, b1, Some(b2)), far).map_err(|_| ()).unwrap();
        a2.write_all(b"y").unwrap();
        assert_eq!(next(&rx).await, (7, Wake::Readable));
    }

    #[tokio::test]
    async fn a_woken_record_parks_again_and_one_taken_out_stays_quiet() {
        let (lot, watcher) = Lot::new().unwrap();
        let (tx, rx) = mpsc::channel::<Rec>();
        watcher.spawn(move |r: Rec, _| tx.send(r).unwrap()).unwrap();
        let back = || async {
            for _ in 0..500 {
                if let Ok(r) = rx.try_recv() {
                    return r;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            panic!("nothing was handed back in 5 s");
        };
        let far = Instant::now() + Duration::from_secs(60);
        let (mut a, b) = pair();
        let mut buf = [0u8; 8];
        lot.park(Rec(1, b, None), far).map_err(|_| ()).unwrap();
        // Woken, read, parked again (the socket is in the set already):
        // woken again by the next bytes, twice.
        for byte in [b"1", b"2"] {
            a.write_all(byte).unwrap();
            let mut r = back().await;
            assert_eq!(r.1.read(&mut buf).unwrap(), 1);
            lot.park(r, far).map_err(|_| ()).unwrap();
        }
        // Taken out but kept: its bytes hand nothing back, and a record
        // parked since under the same slot is not woken by them.
        let kept = lot.take_where(|_| true);
        assert_eq!(kept.len(), 1);
        let (_a2, b2) = pair();
        lot.park(Rec(2, b2, None), far).map_err(|_| ()).unwrap();
        a.write_all(b"3").unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(rx.try_recv().is_err(), "handed back by another's bytes");
        assert_eq!(lot.len(), 1);
    }

    #[tokio::test]
    async fn a_stop_hands_every_one_back_and_parks_no_more() {
        let (lot, rx) = lot();
        let far = Instant::now() + Duration::from_secs(60);
        let mut keep = Vec::new();
        for n in 0..3 {
            let (a, b) = pair();
            lot.park(Rec(n, b, None), far).map_err(|_| ()).unwrap();
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
        assert!(lot.park(Rec(9, b, None), far).is_err());
    }

    #[tokio::test]
    async fn take_where_takes_only_the_chosen_and_park_if_can_refuse() {
        let (lot, rx) = lot();
        let far = Instant::now() + Duration::from_secs(60);
        let mut peers = Vec::new();
        for n in 0..4 {
            let (a, b) = pair();
            lot.park(Rec(n, b, None), far).map_err(|_| ()).unwrap();
            peers.push(a);
        }
        let mut taken: Vec<u32> = lot
            .take_where(|r| r.0 % 2 == 1)
            .into_iter()
            .map(|r| r.0)
            .collect();
        taken.sort();
        assert_eq!(taken, [1, 3]);
        assert_eq!(lot.len(), 2);
        // Taken ones (closed here) are not handed back.
        peers[1].write_all(b"q").unwrap();
        peers[0].write_all(b"q").unwrap();
        assert_eq!(next(&rx).await, (0, Wake::Readable));
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(rx.try_recv().is_err(), "a taken connection was handed back");
        let (_a, b) = pair();
        let refused = lot.park_if(Rec(9, b, None), far, |r| r.0 != 9);
        assert!(matches!(refused, Err(Rec(9, _, _))));
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
    async fn a_gone_sender_counts_once_and_the_other_signals_are_still_watched() {
        let (k1, r1) = watch::channel(0u64);
        let (k2, r2) = watch::channel(0u64);
        let (_stop_tx, stop) = watch::channel(false);
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let c = Arc::clone(&calls);
        let task = tokio::spawn(on_signals(vec![r1, r2], stop, move || {
            c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }));
        let count = || calls.load(std::sync::atomic::Ordering::SeqCst);
        let settle = || tokio::time::sleep(Duration::from_millis(100));
        drop(k1);
        settle().await;
        assert_eq!(count(), 1, "a gone sender is one change");
        settle().await;
        assert_eq!(count(), 1, "and not a change on every poll");
        k2.send_modify(|v| *v += 1);
        for _ in 0..100 {
            if count() == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(count(), 2, "the other signal is still watched");
        assert!(!task.is_finished());
        task.abort();
    }

    #[tokio::test]
    async fn connections_taken_out_are_closed_when_dropped_and_the_lot_goes_on() {
        let (lot, rx) = lot();
        let far = Instant::now() + Duration::from_secs(60);
        let (mut a, b) = pair();
        lot.park(Rec(1, b, None), far).map_err(|_| ()).unwrap();
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
        lot.park(Rec(2, b, None), far).map_err(|_| ()).unwrap();
        a.write_all(b"z").unwrap();
        assert_eq!(next(&rx).await, (2, Wake::Readable));
    }
}
