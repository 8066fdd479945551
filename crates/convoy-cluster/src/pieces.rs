//! Node docs on the wire: a doc (encoded with postcard) is cut into
//! pieces that each fit a datagram, and put together again on arrival.
//! A piece is `version u64 | index u16 | count u16 | bytes`. Per sender
//! only the newest version is assembled; a doc is taken when its last
//! piece arrives and it decodes. Bounded: at most [`MAX_PIECES`] pieces
//! per doc, and one doc in assembly per sender.

use std::collections::HashMap;

use crate::doc::NodeDoc;
use crate::envelope::MAX_PAYLOAD;

/// Piece header: version, index, count.
pub const HEADER: usize = 12;
/// A doc is at most this many pieces (about 170 KB).
pub const MAX_PIECES: u16 = 128;

/// Cuts `doc` into pieces (none if it is too large).
pub fn cut(doc: &NodeDoc) -> Vec<Vec<u8>> {
    let Ok(bytes) = postcard::to_allocvec(doc) else {
        return Vec::new();
    };
    let room = MAX_PAYLOAD - HEADER;
    let count = bytes.len().div_ceil(room).max(1);
    if count > usize::from(MAX_PIECES) {
        return Vec::new();
    }
    let chunks: Vec<&[u8]> = if bytes.is_empty() {
        vec![&[]]
    } else {
        bytes.chunks(room).collect()
    };
    chunks
        .into_iter()
        .enumerate()
        .map(|(i, chunk)| {
            let mut p = Vec::with_capacity(HEADER + chunk.len());
            p.extend_from_slice(&doc.version.to_be_bytes());
            p.extend_from_slice(&(i as u16).to_be_bytes());
            p.extend_from_slice(&(count as u16).to_be_bytes());
            p.extend_from_slice(chunk);
            p
        })
        .collect()
}

/// A doc in assembly.
struct Partial {
    epoch: u64,
    version: u64,
    parts: Vec<Option<Vec<u8>>>,
}

/// Puts docs together from their pieces, per sender. A sender that
/// restarted (a newer epoch) starts afresh: its versions start again.
#[derive(Default)]
pub struct Assembler {
    partial: HashMap<u64, Partial>,
}

impl std::fmt::Debug for Assembler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Assembler")
            .field("senders", &self.partial.len())
            .finish()
    }
}

impl Assembler {
    /// A piece from `sender` in its `epoch`; the doc when it is whole
    /// (and decodes).
    pub fn piece(&mut self, sender: u64, epoch: u64, p: &[u8]) -> Option<NodeDoc> {
        if p.len() < HEADER {
            return None;
        }
        let version = u64::from_be_bytes(p[..8].try_into().expect("8 bytes"));
        let index = u16::from_be_bytes([p[8], p[9]]);
        let count = u16::from_be_bytes([p[10], p[11]]);
        if count == 0 || count > MAX_PIECES || index >= count {
            return None;
        }
        let e = self.partial.entry(sender).or_insert(Partial {
            epoch,
            version,
            parts: Vec::new(),
        });
        if (epoch, version) < (e.epoch, e.version) {
            return None;
        }
        if (epoch, version) > (e.epoch, e.version) || e.parts.len() != usize::from(count) {
            *e = Partial {
                epoch,
                version,
                parts: vec![None; usize::from(count)],
            };
        }
        e.parts[usize::from(index)] = Some(p[HEADER..].to_vec());
        if e.parts.iter().any(Option::is_none) {
            return None;
        }
        let whole: Vec<u8> = e.parts.drain(..).flatten().flatten().collect();
        let doc = postcard::from_bytes::<NodeDoc>(&whole).ok()?;
        (!doc.name.is_empty() && doc.version == version).then_some(doc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doc::{Commands, MemberState, Stamp};

    fn doc(downs: usize) -> NodeDoc {
        let mut commands = Commands::default();
        commands.set(
            "server/web/a/admin",
            "drain",
            Stamp {
                ms: 5,
                node: "n".into(),
            },
        );
        NodeDoc {
            name: "node-1".into(),
            priority: 1,
            epoch: 7,
            version: 3,
            state: MemberState::Converged,
            fingerprint: Default::default(),
            weights: [("web".to_string(), 100)].into_iter().collect(),
            down: (0..downs)
                .map(|i| ("pool".to_string(), format!("server-{i:05}")))
                .collect(),
            view: 9,
            commands,
            connections: 12,
        }
    }

    #[test]
    fn a_doc_travels_in_pieces_in_any_order() {
        for downs in [0, 5, 400] {
            let d = doc(downs);
            let mut pieces = cut(&d);
            assert!(!pieces.is_empty());
            assert!(pieces.iter().all(|p| p.len() <= MAX_PAYLOAD));
            if downs == 400 {
                assert!(pieces.len() > 1, "a large doc is cut");
            }
            pieces.reverse();
            let mut a = Assembler::default();
            let mut got = None;
            for p in &pieces {
                got = a.piece(1, 1, p);
            }
            assert_eq!(got.as_ref(), Some(&d));
        }
    }

    #[test]
    fn stale_and_malformed_pieces_give_nothing() {
        let mut a = Assembler::default();
        let mut newer = doc(400);
        newer.version = 4;
        let old = cut(&doc(400));
        let new = cut(&newer);
        // A piece of the newer version drops the older in assembly.
        assert!(a.piece(1, 1, &old[0]).is_none());
        assert!(a.piece(1, 1, &new[0]).is_none());
        for p in &old[1..] {
            assert!(a.piece(1, 1, p).is_none(), "an older version is ignored");
        }
        let mut last = None;
        for p in &new[1..] {
            last = a.piece(1, 1, p);
        }
        assert_eq!(last.map(|d| d.version), Some(4));
        // The sender restarted: its versions start again, in a new epoch.
        let mut restarted = doc(0);
        restarted.version = 1;
        restarted.epoch = 8;
        let again = cut(&restarted);
        assert_eq!(a.piece(1, 2, &again[0]).map(|d| d.version), Some(1));
        assert!(a.piece(2, 1, b"short").is_none());
        assert!(
            a.piece(2, 1, &[0, 0, 0, 0, 0, 0, 0, 1, 0, 5, 0, 5])
                .is_none(),
            "index past count"
        );
        assert!(
            a.piece(2, 1, &[0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1, 0xff, 0xff])
                .is_none(),
            "not a doc"
        );
    }
}
