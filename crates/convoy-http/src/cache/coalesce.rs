//! Request coalescing: one caller per key fetches ([`LeadGuard`]), the
//! others wait for it ([`Waiter`]) and look up again.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use super::{lock, Cache};

impl Cache {
    /// Request coalescing: the first caller for `key` leads (fetches, stores,
    /// drops the guard); callers while it is in progress get a [`Waiter`] to
    /// await (under their own timeout) before looking up again. Coalescing is
    /// per key, not per `Vary` variant: a waiter whose variant the leader did
    /// not store simply misses again and leads its own fetch.
    pub fn coalesce(&self, key: &str) -> Coalesce {
        let mut f = lock(&self.flights);
        if let Some(flight) = f.map.get(key) {
            let rx = flight.tx.subscribe();
            drop(f);
            self.coalesced.fetch_add(1, Ordering::Relaxed);
            return Coalesce::Wait(Waiter { rx });
        }
        f.next_id += 1;
        let id = f.next_id;
        let (tx, _) = watch::channel(false);
        f.map.insert(key.to_owned(), Flight { id, tx });
        Coalesce::Lead(LeadGuard {
            flights: Arc::clone(&self.flights),
            key: key.to_owned(),
            id,
        })
    }
}

#[derive(Default)]
pub(super) struct Flights {
    map: HashMap<String, Flight>,
    next_id: u64,
}

struct Flight {
    id: u64,
    tx: watch::Sender<bool>,
}

/// Result of [`Cache::coalesce`].
#[derive(Debug)]
pub enum Coalesce {
    /// This caller fetches; drop the guard when done (stored or not).
    Lead(LeadGuard),
    /// Another caller is fetching: await [`Waiter::wait`], then look up again.
    Wait(Waiter),
}

/// Held by the one caller fetching a key; dropping it (also on panic or
/// cancellation) wakes the waiters.
#[derive(Debug)]
pub struct LeadGuard {
    flights: Arc<Mutex<Flights>>,
    key: String,
    id: u64,
}

impl LeadGuard {
    /// The key being fetched.
    pub fn key(&self) -> &str {
        &self.key
    }
}

impl Drop for LeadGuard {
    fn drop(&mut self) {
        let flight = {
            let mut f = lock(&self.flights);
            match f.map.get(&self.key) {
                Some(flight) if flight.id == self.id => f.map.remove(&self.key),
                _ => None,
            }
        };
        if let Some(flight) = flight {
            flight.tx.send_replace(true);
        }
    }
}

/// Waits for a leader; wrap [`Waiter::wait`] in a timeout.
#[derive(Debug)]
pub struct Waiter {
    rx: watch::Receiver<bool>,
}

impl Waiter {
    /// Resolves when the leader has dropped its guard.
    pub async fn wait(mut self) {
        // Err means the sender is gone, which is "done" as well.
        let _ = self.rx.wait_for(|done| *done).await;
    }

    /// Whether the leader is done already.
    pub fn is_done(&self) -> bool {
        *self.rx.borrow() || self.rx.has_changed().is_err()
    }
}

impl std::fmt::Debug for Flights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Flights")
            .field("in_flight", &self.map.len())
            .finish()
    }
}
