//! The envelope of every datagram between cluster nodes: an HMAC-SHA256
//! over the whole datagram with the cluster key, and a sender id, boot
//! epoch and sequence number that make replays detectable. A datagram
//! that is too short or too long, not ours, forged, or seen before is
//! refused before anything reads its payload; state per sender is kept
//! only after a valid tag, so forged traffic cannot grow it.
//!
//! ```text
//! magic "CV" | version 1 | kind | sender u64 | epoch u64 | seq u64 | payload | tag (32)
//! ```
//!
//! `epoch` is the sender's start time in milliseconds: a restarted node
//! starts a new epoch, and datagrams of an older epoch of a sender are
//! refused. Within an epoch, a window of the last 64 sequence numbers
//! accepts datagrams out of order but each only once.

use std::collections::HashMap;

use ring::hmac;

/// Bytes the envelope adds to a payload.
pub const OVERHEAD: usize = HEADER + TAG;
/// Largest datagram sent or accepted (below a 1500-byte MTU).
pub const MAX_DATAGRAM: usize = 1400;
/// Largest payload.
pub const MAX_PAYLOAD: usize = MAX_DATAGRAM - OVERHEAD;

const HEADER: usize = 2 + 1 + 1 + 8 + 8 + 8;
const TAG: usize = 32;
const MAGIC: [u8; 2] = *b"CV";
const VERSION: u8 = 1;
/// Senders remembered for replay protection at most.
const MAX_SENDERS: usize = 4096;

/// Why a datagram was refused (each is counted, and logged at a limited
/// rate).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// Shorter than an envelope, or longer than [`MAX_DATAGRAM`].
    #[error("malformed or oversized datagram")]
    Malformed,
    /// Not a convoy cluster datagram of this version.
    #[error("not a convoy cluster datagram")]
    Foreign,
    /// The tag does not match: another key, or forged.
    #[error("authentication failed (wrong key or forged)")]
    BadTag,
    /// Seen before, or of an older epoch of its sender.
    #[error("replayed or old datagram")]
    Replay,
    /// From this node's own id (a loop, or another node with its name).
    #[error("datagram with this node's own id")]
    Own,
}

/// A datagram that passed: who sent it, what kind, its payload.
#[derive(Debug, PartialEq, Eq)]
pub struct Opened<'a> {
    /// The sender's id.
    pub sender: u64,
    /// The sender's epoch (its start time).
    pub epoch: u64,
    /// The payload's kind.
    pub kind: u8,
    /// The payload.
    pub payload: &'a [u8],
}

/// Seals this node's datagrams and opens others'.
pub struct Envelope {
    key: hmac::Key,
    sender: u64,
    epoch: u64,
    seq: u64,
    windows: HashMap<u64, Window>,
}

impl std::fmt::Debug for Envelope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Envelope")
            .field("sender", &self.sender)
            .field("epoch", &self.epoch)
            .finish_non_exhaustive()
    }
}

impl Envelope {
    /// With the cluster `key`, for this node's `sender` id, started at
    /// `epoch` (milliseconds since the Unix epoch).
    pub fn new(key: &[u8], sender: u64, epoch: u64) -> Envelope {
        Envelope {
            key: hmac::Key::new(hmac::HMAC_SHA256, key),
            sender,
            epoch,
            seq: 0,
            windows: HashMap::new(),
        }
    }

    /// Writes a datagram with `payload` of `kind` into `out` (cleared).
    pub fn seal(&mut self, kind: u8, payload: &[u8], out: &mut Vec<u8>) {
        debug_assert!(payload.len() <= MAX_PAYLOAD);
        self.seq += 1;
        out.clear();
        out.extend_from_slice(&MAGIC);
        out.push(VERSION);
        out.push(kind);
        out.extend_from_slice(&self.sender.to_be_bytes());
        out.extend_from_slice(&self.epoch.to_be_bytes());
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(payload);
        let tag = hmac::sign(&self.key, out);
        out.extend_from_slice(tag.as_ref());
    }

    /// Checks a received datagram: its size, its tag, that it is new.
    pub fn open<'a>(&mut self, d: &'a [u8]) -> Result<Opened<'a>, Refused> {
        if d.len() < OVERHEAD || d.len() > MAX_DATAGRAM {
            return Err(Refused::Malformed);
        }
        if d[..2] != MAGIC || d[2] != VERSION {
            return Err(Refused::Foreign);
        }
        let (body, tag) = d.split_at(d.len() - TAG);
        hmac::verify(&self.key, body, tag).map_err(|_| Refused::BadTag)?;
        let word = |at: usize| u64::from_be_bytes(body[at..at + 8].try_into().expect("8 bytes"));
        let (sender, epoch, seq) = (word(4), word(12), word(20));
        if sender == self.sender {
            return Err(Refused::Own);
        }
        if !self.windows.contains_key(&sender) && self.windows.len() >= MAX_SENDERS {
            // Only nodes holding the key get here; forget the quietest.
            if let Some(old) = self
                .windows
                .iter()
                .min_by_key(|(_, w)| w.epoch)
                .map(|(k, _)| *k)
            {
                self.windows.remove(&old);
            }
        }
        if !self.windows.entry(sender).or_default().accept(epoch, seq) {
            return Err(Refused::Replay);
        }
        Ok(Opened {
            sender,
            epoch,
            kind: body[3],
            payload: &body[HEADER..],
        })
    }
}

/// The sequence numbers seen of one sender's current epoch.
#[derive(Debug, Default)]
struct Window {
    epoch: u64,
    top: u64,
    seen: u64,
}

impl Window {
    fn accept(&mut self, epoch: u64, seq: u64) -> bool {
        if epoch < self.epoch {
            return false;
        }
        if epoch > self.epoch || self.top == 0 {
            *self = Window {
                epoch,
                top: seq,
                seen: 1,
            };
            return true;
        }
        if seq > self.top {
            let shift = seq - self.top;
            self.seen = if shift >= 64 {
                1
            } else {
                (self.seen << shift) | 1
            };
            self.top = seq;
            return true;
        }
        let back = self.top - seq;
        if back >= 64 || self.seen & (1 << back) != 0 {
            return false;
        }
        self.seen |= 1 << back;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

    #[test]
    fn sealed_datagrams_open_once_and_only_with_the_key() {
        let mut a = Envelope::new(KEY, 1, 1000);
        let mut b = Envelope::new(KEY, 2, 2000);
        let mut d = Vec::new();
        a.seal(7, b"hello", &mut d);
        let o = b.open(&d).unwrap();
        assert_eq!(
            (o.sender, o.epoch, o.kind, o.payload),
            (1, 1000, 7, &b"hello"[..])
        );
        assert_eq!(b.open(&d), Err(Refused::Replay), "a replay");
        // Out of order within the window: each once.
        let mut d2 = Vec::new();
        let mut d3 = Vec::new();
        a.seal(7, b"two", &mut d2);
        a.seal(7, b"three", &mut d3);
        assert!(b.open(&d3).is_ok());
        assert!(b.open(&d2).is_ok());
        assert_eq!(b.open(&d2), Err(Refused::Replay));
        // Another key: refused, and no state kept for it.
        let mut other = Envelope::new(b"another key, also 32 bytes long!", 3, 1);
        other.seal(7, b"x", &mut d);
        assert_eq!(b.open(&d), Err(Refused::BadTag));
        assert!(!b.windows.contains_key(&3));
        // Any changed byte breaks the tag.
        a.seal(7, b"payload", &mut d);
        for i in 0..d.len() {
            let mut bad = d.clone();
            bad[i] ^= 0x40;
            assert!(b.open(&bad).is_err(), "byte {i}");
        }
        // Its own datagrams (another node with the same id) are refused.
        let mut twin = Envelope::new(KEY, 2, 5);
        twin.seal(7, b"x", &mut d);
        assert_eq!(b.open(&d), Err(Refused::Own));
    }

    #[test]
    fn a_restarted_sender_starts_a_new_epoch_and_its_old_one_is_refused() {
        let mut b = Envelope::new(KEY, 2, 0);
        let mut old = Envelope::new(KEY, 1, 1000);
        let mut d_old = Vec::new();
        old.seal(1, b"old", &mut d_old);
        let mut new = Envelope::new(KEY, 1, 2000);
        let mut d = Vec::new();
        new.seal(1, b"new", &mut d);
        assert!(b.open(&d).is_ok());
        assert_eq!(b.open(&d_old), Err(Refused::Replay));
    }

    #[test]
    fn malformed_and_foreign_datagrams_are_refused() {
        let mut b = Envelope::new(KEY, 2, 0);
        assert_eq!(b.open(b""), Err(Refused::Malformed));
        assert_eq!(b.open(&[0u8; MAX_DATAGRAM + 1]), Err(Refused::Malformed));
        assert_eq!(b.open(&[0u8; OVERHEAD]), Err(Refused::Foreign));
    }

    #[test]
    fn the_window_slides() {
        let mut w = Window::default();
        assert!(w.accept(1, 100));
        assert!(w.accept(1, 164 + 5));
        assert!(!w.accept(1, 100), "fell out of the window");
        assert!(w.accept(1, 150));
        assert!(!w.accept(1, 150));
    }
}
