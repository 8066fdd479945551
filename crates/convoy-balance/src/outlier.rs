//! Passive outlier ejection for request-level balancing: a server with
//! `consecutive` errors in a row (5xx, connect failures, timeouts) is
//! ejected for `base_ms × times ejected` (capped at `max_ms`), so a server
//! that keeps failing stays out longer each time; a server that stays good
//! for ten base periods has its count forgiven. The caller caps how much of
//! a pool may be ejected at once with [`may_eject`].

/// Ejection settings.
#[derive(Clone, Copy, Debug)]
pub struct OutlierConfig {
    /// Errors in a row that eject.
    pub consecutive: u32,
    /// First ejection time.
    pub base_ms: u64,
    /// Longest ejection time.
    pub max_ms: u64,
}

/// One server's outlier state.
#[derive(Clone, Debug, Default)]
pub struct OutlierState {
    errors: u32,
    ejections: u32,
    ejected_until: u64,
    last_ejection: u64,
}

impl OutlierState {
    /// Ejected at `now_ms`.
    pub fn is_ejected(&self, now_ms: u64) -> bool {
        now_ms < self.ejected_until
    }

    /// Times ejected (after forgiveness).
    pub fn ejections(&self) -> u32 {
        self.ejections
    }

    /// Milliseconds of ejection left at `now_ms`.
    pub fn ejected_for(&self, now_ms: u64) -> u64 {
        self.ejected_until.saturating_sub(now_ms)
    }

    /// Takes over an ejection from another process: `left_ms` still to
    /// run, after `ejections` ejections (so the next one lasts longer).
    pub fn resume(&mut self, ejections: u32, left_ms: u64, now_ms: u64) {
        self.ejections = ejections;
        if left_ms > 0 {
            self.ejected_until = now_ms + left_ms;
            self.last_ejection = now_ms;
        }
    }

    /// Records a request's outcome; returns the end of a new ejection if
    /// this outcome ejects the server (and `allowed` says the pool may lose
    /// one more server: asked only then, as it may look at every server).
    pub fn record(
        &mut self,
        ok: bool,
        now_ms: u64,
        cfg: &OutlierConfig,
        allowed: impl FnOnce() -> bool,
    ) -> Option<u64> {
        if ok {
            self.errors = 0;
            if self.ejections > 0 && now_ms.saturating_sub(self.last_ejection) > 10 * cfg.base_ms {
                self.ejections = 0;
            }
            return None;
        }
        self.errors += 1;
        if self.errors < cfg.consecutive.max(1) || self.is_ejected(now_ms) || !allowed() {
            return None;
        }
        self.errors = 0;
        self.ejections += 1;
        let dur = cfg
            .base_ms
            .saturating_mul(u64::from(self.ejections))
            .min(cfg.max_ms);
        self.ejected_until = now_ms + dur;
        self.last_ejection = now_ms;
        Some(self.ejected_until)
    }
}

/// Whether one more of `pool` servers may be ejected when `ejected` already
/// are, keeping at most `max_percent` % out (at least one may always go,
/// unless the pool has a single server).
pub fn may_eject(ejected: usize, pool: usize, max_percent: u32) -> bool {
    if pool <= 1 {
        return false;
    }
    let cap = (pool * max_percent.min(100) as usize / 100).max(1);
    ejected < cap
}

#[cfg(test)]
mod tests {
    use super::*;

    const CFG: OutlierConfig = OutlierConfig {
        consecutive: 3,
        base_ms: 1000,
        max_ms: 2500,
    };

    #[test]
    fn ejects_after_consecutive_errors_with_growing_time() {
        let mut s = OutlierState::default();
        assert_eq!(s.record(false, 0, &CFG, || true), None);
        assert_eq!(
            s.record(true, 0, &CFG, || true),
            None,
            "a success resets the run"
        );
        s.record(false, 1, &CFG, || true);
        s.record(false, 2, &CFG, || true);
        assert_eq!(s.record(false, 3, &CFG, || true), Some(1003));
        assert!(s.is_ejected(500) && !s.is_ejected(1003));
        for t in [1100, 1101] {
            s.record(false, t, &CFG, || true);
        }
        assert_eq!(
            s.record(false, 1102, &CFG, || true),
            Some(3102),
            "second time: 2× base"
        );
        for t in [3200, 3201] {
            s.record(false, t, &CFG, || true);
        }
        assert_eq!(
            s.record(false, 3202, &CFG, || true),
            Some(5702),
            "capped at max"
        );
        // Good for long enough: forgiven.
        s.record(true, 20_000, &CFG, || true);
        assert_eq!(s.ejections(), 0);
    }

    #[test]
    fn the_pool_is_asked_only_when_an_ejection_is_due() {
        let mut s = OutlierState::default();
        let asked = std::cell::Cell::new(0);
        let asked = &asked;
        let ask = |ok| {
            move || {
                asked.set(asked.get() + 1);
                ok
            }
        };
        s.record(true, 0, &CFG, ask(true));
        s.record(false, 1, &CFG, ask(true));
        s.record(false, 2, &CFG, ask(true));
        assert_eq!(asked.get(), 0, "no ejection due yet");
        // Due, but the pool may not lose a server: not ejected, and the
        // run goes on.
        assert_eq!(s.record(false, 3, &CFG, ask(false)), None);
        assert_eq!(asked.get(), 1);
        assert_eq!(s.record(false, 4, &CFG, ask(true)), Some(1004));
        assert_eq!(asked.get(), 2);
    }

    #[test]
    fn pool_cap() {
        assert!(may_eject(0, 10, 30));
        assert!(may_eject(2, 10, 30));
        assert!(!may_eject(3, 10, 30));
        assert!(may_eject(0, 2, 10), "one may always go");
        assert!(!may_eject(0, 1, 100), "never the only server");
        let mut s = OutlierState::default();
        for t in 0..10 {
            assert_eq!(s.record(false, t, &CFG, || false), None);
        }
    }
}
