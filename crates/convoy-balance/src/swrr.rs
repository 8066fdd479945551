//! Smooth weighted round robin (the nginx algorithm): every pick adds each
//! available server's weight to its running score, takes the highest score
//! and subtracts the total from it. Shares match the weights exactly over
//! every cycle of `sum(weights)` picks and the picks are spread evenly
//! (weights 5:1:1 give a a b a c a a, not a a a a a b c). O(servers) per
//! pick, meant for HTTP requests, where the pool keeps it behind a lock.

/// Running scores, one per server.
#[derive(Clone, Debug, Default)]
pub struct Swrr {
    current: Vec<i64>,
}

impl Swrr {
    /// Scores for `n` servers.
    pub fn new(n: usize) -> Self {
        Swrr {
            current: vec![0; n],
        }
    }

    /// Picks among the servers for which `weight(i)` is non-zero; `None` if
    /// there is none.
    pub fn pick(&mut self, weight: impl Fn(usize) -> u32) -> Option<usize> {
        let mut total: i64 = 0;
        let mut best: Option<usize> = None;
        for i in 0..self.current.len() {
            let w = i64::from(weight(i));
            if w == 0 {
                continue;
            }
            self.current[i] += w;
            total += w;
            if best.is_none_or(|b| self.current[i] > self.current[b]) {
                best = Some(i);
            }
        }
        let b = best?;
        self.current[b] -= total;
        Some(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smooth_sequence() {
        let w = [5, 1, 1];
        let mut s = Swrr::new(3);
        let seq: Vec<usize> = (0..7).map(|_| s.pick(|i| w[i]).unwrap()).collect();
        assert_eq!(seq, [0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn exact_shares_and_skips_unavailable() {
        let w = [1, 2, 3, 0];
        let mut s = Swrr::new(4);
        let mut n = [0; 4];
        for _ in 0..600 {
            n[s.pick(|i| w[i]).unwrap()] += 1;
        }
        assert_eq!(n, [100, 200, 300, 0]);
        assert_eq!(Swrr::new(2).pick(|_| 0), None);
    }
}
