//! Slow start: a server that just came back (or was just added) receives a
//! weight that ramps linearly from 10% to 100% of its configured weight over
//! the slow-start window, so a cold cache or a JIT warming up is not hit by
//! its full share at once.

use std::time::Duration;

/// The effective weight `elapsed` after the server came up.
pub fn ramp_weight(weight: u32, elapsed: Duration, window: Duration) -> u32 {
    if weight == 0 || window.is_zero() || elapsed >= window {
        return weight;
    }
    let frac = 0.1 + 0.9 * elapsed.as_secs_f64() / window.as_secs_f64();
    ((f64::from(weight) * frac).round() as u32).clamp(1, weight)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ramps_from_a_tenth_to_full() {
        let w = Duration::from_secs(10);
        assert_eq!(ramp_weight(100, Duration::ZERO, w), 10);
        assert_eq!(ramp_weight(100, Duration::from_secs(5), w), 55);
        assert_eq!(ramp_weight(100, Duration::from_secs(10), w), 100);
        assert_eq!(ramp_weight(100, Duration::from_secs(60), w), 100);
        assert_eq!(ramp_weight(1, Duration::ZERO, w), 1, "never below 1");
        assert_eq!(ramp_weight(7, Duration::ZERO, Duration::ZERO), 7);
    }

    #[test]
    fn monotonic() {
        let w = Duration::from_millis(1000);
        let mut last = 0;
        for ms in 0..=1000 {
            let v = ramp_weight(50, Duration::from_millis(ms), w);
            assert!(v >= last);
            last = v;
        }
    }
}
