//! The node's recent events (server up/down, zone down, drain finished,
//! standby on/off, reload applied/refused, ejections, ...), kept in a
//! bounded ring for the admin API's `/api/v1/events`. Each event has a
//! sequence number so a poller asks only for newer ones.

use std::collections::VecDeque;
use std::sync::Mutex;

use serde_json::Value;

/// A bounded ring of events as JSON objects.
#[derive(Debug)]
pub struct EventRing {
    inner: Mutex<(u64, VecDeque<Value>)>,
    cap: usize,
}

impl EventRing {
    /// A ring keeping the last `cap` events.
    pub fn new(cap: usize) -> Self {
        EventRing {
            inner: Mutex::new((0, VecDeque::with_capacity(cap.min(1024)))),
            cap: cap.max(1),
        }
    }

    /// Adds an event (a JSON object); `seq` is set on it.
    pub fn push(&self, mut ev: Value) {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        g.0 += 1;
        if let Value::Object(m) = &mut ev {
            m.insert("seq".into(), Value::from(g.0));
        }
        if g.1.len() == self.cap {
            g.1.pop_front();
        }
        g.1.push_back(ev);
    }

    /// Events with a sequence number above `since`, oldest first, and the
    /// newest sequence number.
    pub fn since(&self, since: u64) -> (Vec<Value>, u64) {
        let g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let evs =
            g.1.iter()
                .filter(|e| {
                    e.get("seq")
                        .and_then(Value::as_u64)
                        .is_some_and(|s| s > since)
                })
                .cloned()
                .collect();
        (evs, g.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_and_filters_by_sequence() {
        let r = EventRing::new(3);
        for i in 0..5 {
            r.push(serde_json::json!({ "event": "x", "i": i }));
        }
        let (all, last) = r.since(0);
        assert_eq!(last, 5);
        let is: Vec<i64> = all.iter().map(|e| e["i"].as_i64().unwrap()).collect();
        assert_eq!(is, [2, 3, 4]);
        let (newer, _) = r.since(4);
        assert_eq!(newer.len(), 1);
        assert_eq!(newer[0]["seq"], 5);
    }
}
