//! The standby-server switch: turns on when a pool's quality metric (p99
//! latency, queue length) has stayed above `on_above` for `hold_ms`, and off
//! again when it has stayed below `off_below` (lower than `on_above`) for
//! `hold_ms`, so a metric hovering near one threshold does not flap.

/// On/off switch with thresholds and hold time.
#[derive(Clone, Debug)]
pub struct Hysteresis {
    on_above: f64,
    off_below: f64,
    hold_ms: u64,
    on: bool,
    since: Option<u64>,
}

impl Hysteresis {
    /// A switch, initially off. `off_below` should be below `on_above`.
    pub fn new(on_above: f64, off_below: f64, hold_ms: u64) -> Self {
        Hysteresis {
            on_above,
            off_below: off_below.min(on_above),
            hold_ms,
            on: false,
            since: None,
        }
    }

    /// Current state.
    pub fn is_on(&self) -> bool {
        self.on
    }

    /// Feeds a sample; returns the new state when it changes.
    pub fn observe(&mut self, value: f64, now_ms: u64) -> Option<bool> {
        let pushing = if self.on {
            value < self.off_below
        } else {
            value > self.on_above
        };
        if !pushing {
            self.since = None;
            return None;
        }
        let since = *self.since.get_or_insert(now_ms);
        if now_ms.saturating_sub(since) >= self.hold_ms {
            self.on = !self.on;
            self.since = None;
            return Some(self.on);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn needs_the_hold_time_both_ways() {
        let mut h = Hysteresis::new(100.0, 50.0, 1000);
        assert_eq!(h.observe(200.0, 0), None);
        assert_eq!(h.observe(200.0, 500), None);
        assert_eq!(h.observe(80.0, 600), None, "a dip resets the timer");
        assert_eq!(h.observe(200.0, 700), None);
        assert_eq!(h.observe(200.0, 1700), Some(true));
        assert_eq!(h.observe(80.0, 1800), None, "between thresholds: stays on");
        assert_eq!(h.observe(80.0, 5000), None);
        assert_eq!(h.observe(10.0, 5100), None);
        assert_eq!(h.observe(10.0, 6100), Some(false));
        assert!(!h.is_on());
    }
}
