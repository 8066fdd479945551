//! Stream bookkeeping: the per-stream wake-ups that tell the connection
//! which streams have something to do, the stream map, and a stream's
//! state (its phase, flow-control windows and pending response data).

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Wake, Waker};

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use http::HeaderMap;
use tokio::time::Instant;

use super::body::{lock, BodyError, Recv};
use super::frame::{self, Reason};

// ---- wake-ups ----

/// Which streams were woken since the connection last looked.
#[derive(Default)]
pub(super) struct Ready {
    pub(super) ids: Mutex<Vec<u32>>,
    pub(super) conn: AtomicWaker,
}

pub(super) struct StreamWake {
    pub(super) id: u32,
    pub(super) queued: AtomicBool,
    pub(super) ready: Arc<Ready>,
}

impl Wake for StreamWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if !self.queued.swap(true, Ordering::AcqRel) {
            self.ready
                .ids
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(self.id);
        }
        self.ready.conn.wake();
    }
}

/// Stream ids are small odd numbers: a multiply spreads them enough.
#[derive(Default)]
pub(super) struct IdHash(u64);

impl Hasher for IdHash {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, b: &[u8]) {
        for &x in b {
            self.0 = (self.0 << 8 | u64::from(x)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }
    fn write_u32(&mut self, n: u32) {
        self.0 = u64::from(n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

pub(super) type IdMap<V> = HashMap<u32, V, BuildHasherDefault<IdHash>>;

// ---- streams ----

pub(super) enum Phase<F, B> {
    /// The request path runs.
    Waiting(Pin<Box<F>>),
    /// The response head went out; its body follows.
    Body(B),
}

pub(super) struct Stream<F, B> {
    pub(super) wake: Arc<StreamWake>,
    pub(super) waker: Waker,
    pub(super) phase: Phase<F, B>,
    /// What we may still send on it.
    pub(super) send_window: i64,
    /// The request body (shared with its [`H2Body`](super::H2Body)).
    pub(super) recv: Option<Recv>,
    /// The client may still send on it.
    pub(super) recv_open: bool,
    /// What the client may still send on it.
    pub(super) recv_window: i64,
    /// Bytes taken by the body and not yet given back.
    pub(super) unacked: u32,
    /// `content-length` left to receive.
    pub(super) expect: Option<u64>,
    /// Response data waiting for window.
    pub(super) pending: Bytes,
    /// The body ended: END_STREAM goes with the last pending byte.
    pub(super) end_pending: bool,
    pub(super) trailers: Option<HeaderMap>,
    /// Since when it waits for the client's window.
    pub(super) stalled: Option<Instant>,
}

impl<F, B> Stream<F, B> {
    /// Gives `n` bytes of the stream's window back to the client, in
    /// updates of at least half the window (`window`).
    pub(super) fn give_back(&mut self, id: u32, n: u32, out: &mut Vec<u8>, window: u32) {
        self.unacked += n;
        if self.unacked > 0 && self.unacked >= window / 2 {
            frame::window_update(out, id, self.unacked);
            self.recv_window += i64::from(self.unacked);
            self.unacked = 0;
        }
    }
}

impl<F, B> Drop for Stream<F, B> {
    fn drop(&mut self) {
        // A body still being read elsewhere learns that no more comes.
        if let Some(r) = &self.recv {
            let mut st = lock(r);
            if !st.end && st.err.is_none() {
                st.err = Some(BodyError(
                    "HTTP/2 stream closed before the request body ended",
                ));
            }
            if let Some(w) = st.waker.take() {
                w.wake();
            }
        }
    }
}

/// How a stream ends (see `Conn::remove`).
#[derive(Clone, Copy)]
pub(super) enum End {
    /// Its response was sent.
    Done,
    /// The client reset it.
    ByClient,
    /// We reset it with this reason.
    Reset(Reason),
}

/// What a stream's poll ended with.
pub(super) enum Step {
    /// Waiting for its future, its body or the client's window.
    Idle,
    /// Our output is full: poll again once it has been written.
    Blocked,
    /// Finished: remove it.
    Done,
    /// Failed on the server's side: reset it.
    Reset(Reason),
}
