//! What ends or winds down a client connection from outside: the
//! graceful stop and the kills, checked cheaply and waited for with one
//! registered waiter.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::sync::watch;

/// What ends or winds down a connection from outside: a graceful stop
/// (finish the request in progress, then close) and kills (close now).
/// Checking costs an atomic load per receiver; a waiter registered once
/// wakes the connection when any of them changes.
pub struct Signals {
    stop: watch::Receiver<bool>,
    kills: [watch::Receiver<u64>; 2],
    wake: Arc<tokio::sync::Notify>,
    waiter: Option<Pin<Box<tokio::sync::futures::OwnedNotified>>>,
    pub(super) stopping: bool,
}

impl Signals {
    /// From the graceful-stop flag and the kill counters (a change a
    /// receiver has not seen is a kill: mark them unchanged when the
    /// connection starts, not when it is served again after a park).
    /// `wake` is notified whenever a signal may have changed.
    pub fn new(
        stop: watch::Receiver<bool>,
        kills: [watch::Receiver<u64>; 2],
        wake: Arc<tokio::sync::Notify>,
    ) -> Signals {
        let stopping = *stop.borrow();
        Signals {
            stopping,
            stop,
            kills,
            wake,
            waiter: None,
        }
    }

    /// The kill receivers, as this connection has seen them (for its
    /// parked record: a kill it has not seen closes it there).
    pub fn into_kills(self) -> [watch::Receiver<u64>; 2] {
        self.kills
    }

    /// `Ready(())`: kill. A stop only sets `stopping`. The wait is polled
    /// only when it is new (to register this connection's waker): every
    /// notification comes with a change of a signal, which the checks
    /// then see, so a registered wait need not be polled again until a
    /// change was seen.
    pub(super) fn poll_kill(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            if self.waiter.is_none() {
                let mut w = Box::pin(Arc::clone(&self.wake).notified_owned());
                // Registered before the checks below, so that a change
                // made after them still wakes this connection.
                let _ = w.as_mut().poll(cx);
                self.waiter = Some(w);
            }
            if self.kills.iter().any(|k| k.has_changed().unwrap_or(false)) {
                return Poll::Ready(());
            }
            if !self.stopping && self.stop.has_changed().unwrap_or(false) && *self.stop.borrow() {
                // The wait was used up by this change: a new one for the
                // kills still to come.
                self.stopping = true;
                self.waiter = None;
                continue;
            }
            return Poll::Pending;
        }
    }
}
