//! Read buffers kept per thread between reads: a connection waiting for
//! its peer holds none, and the next read on the thread takes one back.

use std::cell::RefCell;
use std::thread::LocalKey;

use bytes::BytesMut;

type List = RefCell<Vec<BytesMut>>;

thread_local! {
    static HEADS: List = const { RefCell::new(Vec::new()) };
    static FRAMES: List = const { RefCell::new(Vec::new()) };
}

/// One thread-local list of spare buffers of one size.
pub(crate) struct Spares {
    list: &'static LocalKey<List>,
    /// A buffer's size.
    pub(crate) size: usize,
    /// At most this many are kept.
    keep: usize,
}

/// HTTP/1 client connections' read buffers: a request head and what
/// follows it.
pub(crate) const fn heads() -> Spares {
    Spares {
        list: &HEADS,
        size: 4096,
        keep: 64,
    }
}

/// HTTP/2 connections' read buffers: room for a whole frame of the
/// default maximum size.
pub(crate) const fn frames() -> Spares {
    Spares {
        list: &FRAMES,
        size: 16 * 1024 + 9,
        keep: 16,
    }
}

impl Spares {
    /// A spare buffer, or a new one.
    pub(crate) fn take(&self) -> BytesMut {
        self.list
            .with(|s| s.borrow_mut().pop())
            .unwrap_or_else(|| BytesMut::with_capacity(self.size))
    }

    /// Keeps an emptied buffer for the next read if it still has room
    /// for `size` bytes (`try_reclaim`: it may still share its allocation
    /// with bytes handed out before, which it then keeps alive; a buffer
    /// owns only its own range, so nothing handed out is written over)
    /// and did not grow past four times the size.
    pub(crate) fn put(&self, mut b: BytesMut) {
        b.clear();
        if !b.try_reclaim(self.size) || b.capacity() > 4 * self.size {
            return;
        }
        self.list.with(|s| {
            let mut s = s.borrow_mut();
            if s.len() < self.keep {
                s.push(b);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_put_back_is_taken_again_unless_its_bytes_are_still_held() {
        let pool = frames();
        let mut b = pool.take();
        assert!(b.capacity() >= pool.size);
        b.extend_from_slice(b"frame");
        let at = b.as_ptr();
        pool.put(b);
        let again = pool.take();
        assert_eq!(again.as_ptr(), at, "the same buffer back");
        assert!(again.is_empty());
        // One left with less room than a buffer's size (its start handed
        // out and still held) is not kept.
        let mut b = again;
        b.extend_from_slice(b"held");
        let held = b.split_to(4).freeze();
        pool.put(b);
        let next = pool.take();
        assert!(next.capacity() >= pool.size);
        assert_ne!(next.as_ptr(), held.as_ptr().wrapping_add(4));
    }
}
