//! The rise/fall health state machine: a server goes down after `fall`
//! consecutive failed observations and comes back after `rise` consecutive
//! good ones. Observations come from active probes and from passive signals
//! (connect failures, resets) alike; the caller decides what counts.

/// A change of health state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    /// The server became healthy.
    Up,
    /// The server became unhealthy.
    Down,
}

/// Consecutive-count health tracker.
#[derive(Clone, Debug)]
pub struct HealthMachine {
    rise: u32,
    fall: u32,
    up: bool,
    good: u32,
    bad: u32,
}

impl HealthMachine {
    /// A machine starting in state `up`. `rise` and `fall` are at least 1.
    pub fn new(rise: u32, fall: u32, up: bool) -> Self {
        HealthMachine {
            rise: rise.max(1),
            fall: fall.max(1),
            up,
            good: 0,
            bad: 0,
        }
    }

    /// Current state.
    pub fn is_up(&self) -> bool {
        self.up
    }

    /// Records one observation; returns the transition it caused, if any.
    pub fn observe(&mut self, ok: bool) -> Option<Transition> {
        if ok {
            self.bad = 0;
            self.good = self.good.saturating_add(1);
            if !self.up && self.good >= self.rise {
                self.up = true;
                return Some(Transition::Up);
            }
        } else {
            self.good = 0;
            self.bad = self.bad.saturating_add(1);
            if self.up && self.bad >= self.fall {
                self.up = false;
                return Some(Transition::Down);
            }
        }
        None
    }

    /// Forces a state (e.g. a passive signal marked the server down); the
    /// counters restart.
    pub fn force(&mut self, up: bool) {
        self.up = up;
        self.good = 0;
        self.bad = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn falls_after_fall_and_rises_after_rise() {
        let mut m = HealthMachine::new(2, 3, true);
        assert_eq!(m.observe(false), None);
        assert_eq!(m.observe(false), None);
        assert_eq!(m.observe(false), Some(Transition::Down));
        assert_eq!(m.observe(false), None);
        assert_eq!(m.observe(true), None);
        assert_eq!(m.observe(false), None, "a failure resets the rise count");
        assert_eq!(m.observe(true), None);
        assert_eq!(m.observe(true), Some(Transition::Up));
        assert!(m.is_up());
    }

    #[test]
    fn flapping_below_threshold_never_changes_state() {
        let mut m = HealthMachine::new(3, 3, true);
        for i in 0..100 {
            assert_eq!(m.observe(i % 3 != 0), None);
        }
    }
}
