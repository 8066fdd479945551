//! Per-request choices among a pool's available servers, given their load:
//! least outstanding (weighted, counting request cost) and power of two
//! choices over the `qos` score. The caller passes the random numbers, so
//! every choice is reproducible in tests.

/// What the selectors know of one server.
#[derive(Clone, Copy, Debug)]
pub struct Load {
    /// May take a request now.
    pub available: bool,
    /// Weight.
    pub weight: u32,
    /// Sum of the costs of its requests in flight.
    pub outstanding: u64,
    /// `qos` score (see `ewma::qos_score`); lower is better.
    pub score: f64,
}

/// The available server with the least outstanding cost per unit of
/// weight; ties go to the first at or after `start` (rotate `start` to
/// spread ties).
pub fn least_outstanding(servers: &[Load], start: usize) -> Option<usize> {
    let n = servers.len();
    let mut best: Option<(usize, u128)> = None;
    for k in 0..n {
        let i = (start + k) % n;
        let s = &servers[i];
        if !s.available || s.weight == 0 {
            continue;
        }
        // (outstanding+1)/weight compared without floats:
        // a/wa < b/wb  ⇔  a·wb < b·wa.
        let key = u128::from(s.outstanding + 1);
        match best {
            None => best = Some((i, key)),
            Some((b, bk)) => {
                let bw = u128::from(servers[b].weight);
                if key * bw < bk * u128::from(s.weight) {
                    best = Some((i, key));
                }
            }
        }
    }
    best.map(|(i, _)| i)
}

/// Power of two choices: draws two distinct available servers with `r1`,
/// `r2` and keeps the one with the lower score.
pub fn p2c(servers: &[Load], r1: u64, r2: u64) -> Option<usize> {
    let avail: Vec<usize> = (0..servers.len())
        .filter(|&i| servers[i].available && servers[i].weight > 0)
        .collect();
    match avail.len() {
        0 => None,
        1 => Some(avail[0]),
        n => {
            let a = avail[(r1 % n as u64) as usize];
            let mut b = avail[(r2 % (n as u64 - 1)) as usize];
            if b == a {
                b = avail[n - 1];
            }
            Some(if servers[b].score < servers[a].score {
                b
            } else {
                a
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn load(outstanding: u64, weight: u32, score: f64) -> Load {
        Load {
            available: true,
            weight,
            outstanding,
            score,
        }
    }

    #[test]
    fn least_outstanding_weighs_cost_and_weight() {
        let s = [load(4, 1, 0.0), load(2, 1, 0.0), load(5, 3, 0.0)];
        // (4+1)/1=5, (2+1)/1=3, (5+1)/3=2 → the third
        assert_eq!(least_outstanding(&s, 0), Some(2));
        let mut s = s;
        s[2].available = false;
        assert_eq!(least_outstanding(&s, 0), Some(1));
        let ties = [load(0, 1, 0.0), load(0, 1, 0.0)];
        assert_eq!(least_outstanding(&ties, 1), Some(1));
        assert_eq!(least_outstanding(&[], 0), None);
    }

    proptest! {
        /// p2c never picks the worse of its two draws, never an unavailable
        /// server, and never the single worst server when there are ≥ 3.
        #[test]
        fn p2c_avoids_the_worst(scores in proptest::collection::vec(0.0f64..1e6, 1..20), r1 in any::<u64>(), r2 in any::<u64>()) {
            let s: Vec<Load> = scores.iter().map(|&x| load(0, 1, x)).collect();
            let i = p2c(&s, r1, r2).unwrap();
            if s.len() >= 2 {
                let worst = scores.iter().cloned().fold(f64::MIN, f64::max);
                let uniq_worst = scores.iter().filter(|&&x| x == worst).count() == 1;
                if uniq_worst {
                    prop_assert!(scores[i] < worst);
                }
            }
        }
    }

    #[test]
    fn p2c_share_of_a_slow_server_is_small() {
        // Four servers, one 10x slower: over many draws it is chosen only
        // when drawn against... never (it always loses a duel).
        let s = [
            load(0, 1, 1.0),
            load(0, 1, 1.0),
            load(0, 1, 10.0),
            load(0, 1, 1.0),
        ];
        let mut x = 12345u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut slow = 0;
        for _ in 0..10_000 {
            if p2c(&s, next(), next()) == Some(2) {
                slow += 1;
            }
        }
        assert_eq!(slow, 0);
    }
}
