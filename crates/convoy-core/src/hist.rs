//! A lock-free latency histogram with fixed buckets (microseconds), cheap
//! enough for the request path: one `partition_point` over 16 bounds and
//! three relaxed atomic adds. Read for `/metrics` (cumulative buckets) and
//! for quantile estimates (p50/p99) over a window (the difference of two
//! readings).

use std::sync::atomic::{AtomicU64, Ordering};

/// Upper bounds of the buckets, in microseconds; a last, unbounded bucket
/// follows.
pub const BOUNDS_US: [u64; 16] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000, 10_000_000,
];

const N: usize = BOUNDS_US.len() + 1;

/// Counts of observations per bucket, their number and their sum.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; N],
    count: AtomicU64,
    sum_us: AtomicU64,
}

/// A reading of a histogram: per-bucket counts (not cumulative), count
/// and sum in microseconds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reading {
    /// Observations per bucket; the last is above every bound.
    pub buckets: [u64; N],
    /// Observations.
    pub count: u64,
    /// Sum of the observations, µs.
    pub sum_us: u64,
}

impl Histogram {
    /// Records one observation of `us` microseconds.
    pub fn observe(&self, us: u64) {
        let i = BOUNDS_US.partition_point(|&b| b < us);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    /// The current counts.
    pub fn read(&self) -> Reading {
        let mut r = Reading::default();
        for (o, b) in r.buckets.iter_mut().zip(&self.buckets) {
            *o = b.load(Ordering::Relaxed);
        }
        r.count = self.count.load(Ordering::Relaxed);
        r.sum_us = self.sum_us.load(Ordering::Relaxed);
        r
    }
}

impl Reading {
    /// What was observed since `earlier`.
    pub fn since(&self, earlier: &Reading) -> Reading {
        let mut r = Reading::default();
        for i in 0..N {
            r.buckets[i] = self.buckets[i].saturating_sub(earlier.buckets[i]);
        }
        r.count = self.count.saturating_sub(earlier.count);
        r.sum_us = self.sum_us.saturating_sub(earlier.sum_us);
        r
    }

    /// Estimated `q` quantile (0..1) in µs, interpolated linearly inside
    /// its bucket; `None` without observations. Values in the last bucket
    /// are reported as its lower bound.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total: u64 = self.buckets.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = (q.clamp(0.0, 1.0) * total as f64).max(1.0);
        let mut seen = 0u64;
        for (i, &n) in self.buckets.iter().enumerate() {
            if n == 0 {
                continue;
            }
            if (seen + n) as f64 >= rank {
                let lo = if i == 0 { 0 } else { BOUNDS_US[i - 1] } as f64;
                let Some(&hi) = BOUNDS_US.get(i) else {
                    return Some(lo);
                };
                let frac = (rank - seen as f64) / n as f64;
                return Some(lo + (hi as f64 - lo) * frac);
            }
            seen += n;
        }
        None
    }

    /// Cumulative counts per upper bound in seconds, ending with +Inf, as
    /// Prometheus wants them.
    pub fn cumulative_seconds(&self) -> Vec<(f64, u64)> {
        let mut acc = 0;
        let mut out = Vec::with_capacity(N);
        for (i, n) in self.buckets.iter().enumerate() {
            acc += n;
            let le = BOUNDS_US.get(i).map_or(f64::INFINITY, |&b| b as f64 / 1e6);
            out.push((le, acc));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_quantiles_and_windows() {
        let h = Histogram::default();
        for _ in 0..90 {
            h.observe(800); // (500, 1000]
        }
        for _ in 0..10 {
            h.observe(40_000); // (25ms, 50ms]
        }
        let r = h.read();
        assert_eq!(r.count, 100);
        assert_eq!(r.sum_us, 90 * 800 + 10 * 40_000);
        let p50 = r.quantile(0.5).unwrap();
        assert!((500.0..=1000.0).contains(&p50), "{p50}");
        let p99 = r.quantile(0.99).unwrap();
        assert!((25_000.0..=50_000.0).contains(&p99), "{p99}");
        let cum = r.cumulative_seconds();
        assert_eq!(cum.last().unwrap(), &(f64::INFINITY, 100));
        assert_eq!(cum[3], (0.001, 90));
        // A window sees only what came after the earlier reading.
        h.observe(20_000_000);
        let w = h.read().since(&r);
        assert_eq!(w.count, 1);
        assert_eq!(w.quantile(0.5), Some(10_000_000.0));
        assert_eq!(Reading::default().quantile(0.5), None);
    }
}
