//! The admission queue of a pool: requests that
//! find every server at its high-water mark wait here and are released,
//! one per freed slot, highest priority class first. Aging keeps lower
//! classes from starving: a request's effective class improves by one for
//! every `aging_ms` it has waited. One FIFO per class, so a release looks
//! only at the head of each class. Bounded: a full queue refuses at once.

use std::collections::VecDeque;

/// A queued request's handle, for removing it (client gone).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Ticket(u64);

#[derive(Debug)]
struct Entry<T> {
    ticket: Ticket,
    since_ms: u64,
    item: T,
}

/// A bounded multi-class queue with aging. Class 0 is the highest.
#[derive(Debug)]
pub struct PriorityQueue<T> {
    classes: Vec<VecDeque<Entry<T>>>,
    len: usize,
    cap: usize,
    aging_ms: u64,
    next: u64,
}

impl<T> PriorityQueue<T> {
    /// A queue for classes `0..classes`, holding at most `cap` requests.
    /// `aging_ms` = 0 disables aging (strict priority).
    pub fn new(classes: usize, cap: usize, aging_ms: u64) -> Self {
        PriorityQueue {
            classes: (0..classes.max(1)).map(|_| VecDeque::new()).collect(),
            len: 0,
            cap,
            aging_ms,
            next: 0,
        }
    }

    /// Changes the bound and the aging step (a reload); requests already
    /// waiting stay, even above a lowered bound.
    pub fn set_limits(&mut self, cap: usize, aging_ms: u64) {
        self.cap = cap;
        self.aging_ms = aging_ms;
    }

    /// Requests waiting.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Queues `item` in `class` (clamped to the lowest class); gives it
    /// back when the queue is full.
    pub fn push(&mut self, item: T, class: usize, now_ms: u64) -> Result<Ticket, T> {
        if self.len >= self.cap {
            return Err(item);
        }
        let c = class.min(self.classes.len() - 1);
        let ticket = Ticket(self.next);
        self.next += 1;
        self.classes[c].push_back(Entry {
            ticket,
            since_ms: now_ms,
            item,
        });
        self.len += 1;
        Ok(ticket)
    }

    /// Effective class of an entry of `class` queued at `since`: lower is
    /// served first; ties go to the earlier ticket.
    fn rank(&self, class: usize, e: &Entry<T>, now_ms: u64) -> (i64, u64) {
        let aged = now_ms
            .saturating_sub(e.since_ms)
            .checked_div(self.aging_ms)
            .unwrap_or(0) as i64;
        (class as i64 - aged, e.ticket.0)
    }

    /// Releases the request to serve next, with how long it waited.
    pub fn pop(&mut self, now_ms: u64) -> Option<(T, u64)> {
        let best = (0..self.classes.len())
            .filter_map(|c| {
                self.classes[c]
                    .front()
                    .map(|e| (c, self.rank(c, e, now_ms)))
            })
            .min_by_key(|(_, r)| *r)
            .map(|(c, _)| c)?;
        let e = self.classes[best].pop_front()?;
        self.len -= 1;
        Some((e.item, now_ms.saturating_sub(e.since_ms)))
    }

    /// Removes a request (its client went away).
    pub fn remove(&mut self, ticket: Ticket) -> Option<T> {
        for q in &mut self.classes {
            if let Some(pos) = q.iter().position(|e| e.ticket == ticket) {
                self.len -= 1;
                return q.remove(pos).map(|e| e.item);
            }
        }
        None
    }

    /// Removes and returns every request that has waited `timeout_ms` or
    /// more (each class is FIFO, so only heads need looking at).
    pub fn expire(&mut self, now_ms: u64, timeout_ms: u64) -> Vec<T> {
        let mut out = Vec::new();
        for q in &mut self.classes {
            while q
                .front()
                .is_some_and(|e| now_ms.saturating_sub(e.since_ms) >= timeout_ms)
            {
                if let Some(e) = q.pop_front() {
                    out.push(e.item);
                }
            }
        }
        self.len -= out.len();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn higher_class_first_fifo_within_class() {
        let mut q = PriorityQueue::new(3, 10, 0);
        q.push("low-1", 2, 0).unwrap();
        q.push("low-2", 2, 1).unwrap();
        q.push("high", 0, 2).unwrap();
        q.push("mid", 1, 3).unwrap();
        let order: Vec<&str> = std::iter::from_fn(|| q.pop(4).map(|(x, _)| x)).collect();
        assert_eq!(order, ["high", "mid", "low-1", "low-2"]);
    }

    #[test]
    fn aging_prevents_starvation() {
        let mut q = PriorityQueue::new(3, 100, 100);
        q.push("old-low", 2, 0).unwrap();
        // A stream of fresh high-priority requests keeps arriving.
        q.push("new-high", 0, 250).unwrap();
        // At t=250 the low one has aged 2 classes: rank 0 vs 0, older wins.
        assert_eq!(q.pop(250).unwrap().0, "old-low");
        assert_eq!(q.pop(250).unwrap(), ("new-high", 0));
    }

    #[test]
    fn bounded_remove_and_expire() {
        let mut q = PriorityQueue::new(2, 2, 0);
        let t = q.push(1, 0, 0).unwrap();
        q.push(2, 1, 10).unwrap();
        assert_eq!(q.push(3, 0, 10), Err(3), "full");
        assert_eq!(q.remove(t), Some(1));
        assert_eq!(q.remove(t), None);
        assert_eq!(q.len(), 1);
        q.push(4, 0, 50).unwrap();
        assert_eq!(q.expire(100, 60), vec![2]);
        assert_eq!(q.pop(100), Some((4, 50)));
        assert!(q.is_empty());
    }
}
