//! Peak-sensitive EWMA of latency (Finagle's and linkerd's "peak EWMA"): a
//! sample above the current value replaces it at once (a server that slows
//! down is noticed on the first slow response); below it, the value decays
//! toward the samples with time constant `tau`, so recovery is gradual.
//! Time is passed in (milliseconds) so tests drive it.

/// Latency estimate of one server.
#[derive(Clone, Debug)]
pub struct PeakEwma {
    value_us: f64,
    last_ms: u64,
    tau_ms: f64,
}

impl PeakEwma {
    /// An estimate starting at `initial_us`, with decay time `tau_ms`.
    pub fn new(initial_us: f64, tau_ms: u64, now_ms: u64) -> Self {
        PeakEwma {
            value_us: initial_us,
            last_ms: now_ms,
            tau_ms: tau_ms.max(1) as f64,
        }
    }

    /// Records a response time.
    pub fn observe(&mut self, rtt_us: f64, now_ms: u64) {
        if rtt_us > self.value_us {
            self.value_us = rtt_us;
        } else {
            let dt = now_ms.saturating_sub(self.last_ms) as f64;
            let w = (-dt / self.tau_ms).exp();
            self.value_us = self.value_us * w + rtt_us * (1.0 - w);
        }
        self.last_ms = self.last_ms.max(now_ms);
    }

    /// Current estimate in microseconds.
    pub fn get(&self) -> f64 {
        self.value_us
    }

    /// Sets the estimate (state taken over from another process).
    pub fn set(&mut self, value_us: f64, now_ms: u64) {
        if value_us.is_finite() && value_us >= 0.0 {
            self.value_us = value_us;
            self.last_ms = now_ms;
        }
    }
}

/// How much each request in flight adds to a server's expected latency,
/// as a fraction of its latency. Not 1 (which assumes a server works
/// through its requests one at a time): servers work concurrently, and
/// the peak-EWMA latency already rises when a server is overloaded; the
/// in-flight term reacts to bursts before those samples arrive. Measured
/// (bench/quality.sh): with 1, a 10× slower origin still got 3.8% of the
/// requests under bursts; with 0.1, 0.3%.
pub const LOAD_WEIGHT: f64 = 0.1;

/// The `qos` score of a server: lower is better. Latency × (1 +
/// LOAD_WEIGHT × outstanding cost), inflated by the recent error rate (an
/// erroring server looks `1 + penalty × error_rate` times slower), divided
/// by weight.
pub fn qos_score(
    latency_us: f64,
    outstanding: u64,
    error_rate: f64,
    penalty: f64,
    weight: u32,
) -> f64 {
    let w = f64::from(weight.max(1));
    latency_us.max(1.0)
        * (LOAD_WEIGHT * outstanding as f64 + 1.0)
        * (1.0 + penalty * error_rate.clamp(0.0, 1.0))
        / w
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peaks_jump_and_decay_slowly() {
        let mut e = PeakEwma::new(1000.0, 1000, 0);
        e.observe(50_000.0, 10);
        assert_eq!(e.get(), 50_000.0, "a slow response is seen at once");
        e.observe(1000.0, 20);
        assert!(
            e.get() > 49_000.0,
            "one fast sample 10 ms later barely moves it"
        );
        e.observe(1000.0, 5000);
        assert!(e.get() < 2000.0, "after 5 tau it has decayed: {}", e.get());
    }

    #[test]
    fn score_orders_by_load_latency_errors_weight() {
        let base = qos_score(1000.0, 0, 0.0, 10.0, 1);
        assert!(qos_score(1000.0, 3, 0.0, 10.0, 1) > base);
        assert!(qos_score(5000.0, 0, 0.0, 10.0, 1) > base);
        assert!(qos_score(1000.0, 0, 0.5, 10.0, 1) > base);
        assert!(qos_score(1000.0, 0, 0.0, 10.0, 2) < base);
    }
}
