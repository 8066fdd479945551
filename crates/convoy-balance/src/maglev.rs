//! Weighted Maglev lookup table (Eisenbud et al., NSDI 2016), with weights.
//!
//! Each backend derives an `offset` and a `skip` from a hash of its stable
//! name, which defines its preference permutation over the table's slots.
//! Backends take turns claiming their next free preferred slot; a backend of
//! weight `w` takes a turn in proportion to `w / max_weight`, so it ends up
//! owning about `M * w / sum(w)` slots. The table size `M` is a prime of at
//! least 100 × backends, which keeps both the weight error and the extra
//! disruption on membership change around 1%.
//!
//! The same table serves two purposes: indexed by a key hash it is a
//! consistent hash (client/network affinity); walked sequentially with a
//! counter it is a weighted round robin whose every full sweep matches the
//! weights exactly, interleaved pseudo-randomly.
//!
//! The table size depends only on the number of backends *configured*
//! (unavailable ones are passed with weight 0) and grows in steps of about
//! ×2, so health changes and small reloads keep the same size and move only
//! the keys of the servers that changed.

use crate::hash::hash64;

const EMPTY: u32 = u32::MAX;

/// A built lookup table. Entries are indices into the backend slice the
/// table was built from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Table {
    entries: Vec<u32>,
}

/// Table sizes: primes just below powers of two, each at least twice the
/// previous one, so a growing pool changes size (and remaps) rarely.
const SIZES: &[usize] = &[
    251, 509, 1021, 2039, 4093, 8191, 16381, 32749, 65521, 131071, 262139, 524287, 1048573,
    2097143, 4194301, 8388593, 16777213,
];

/// The table size for `n` configured backends: ≥ 100 × n, prime.
pub fn table_size(n: usize) -> usize {
    let want = 100 * n.max(1);
    SIZES
        .iter()
        .copied()
        .find(|&s| s >= want)
        .unwrap_or_else(|| next_prime(want))
}

/// The smallest prime ≥ `n` (and ≥ 2).
pub fn next_prime(n: usize) -> usize {
    let mut c = n.max(2);
    loop {
        if is_prime(c) {
            return c;
        }
        c += 1;
    }
}

fn is_prime(n: usize) -> bool {
    if n < 2 {
        return false;
    }
    if n.is_multiple_of(2) {
        return n == 2;
    }
    let mut d = 3;
    while d * d <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 2;
    }
    true
}

impl Table {
    /// Builds a table over `backends`, each a (stable name, weight). Backends
    /// of weight 0 (down, drained, disabled) get no slot but still count for
    /// the table size. An empty or all-zero input gives an empty table, whose
    /// lookups return `None`.
    pub fn build<S: AsRef<[u8]>>(backends: &[(S, u32)]) -> Table {
        let live = backends.iter().filter(|(_, w)| *w > 0).count();
        if live == 0 {
            return Table {
                entries: Vec::new(),
            };
        }
        let m = table_size(backends.len());
        let max_w = backends.iter().map(|(_, w)| *w).max().unwrap_or(1) as u64;
        // Each backend's preference list is offset, offset + skip, ...
        // (mod m): walked by adding, not by multiplying and dividing.
        struct Perm {
            pos: u64,
            skip: u64,
            credit: u64,
            weight: u64,
        }
        let mut perms: Vec<Perm> = backends
            .iter()
            .map(|(name, w)| {
                let name = name.as_ref();
                Perm {
                    pos: hash64(name, 0x6d61_676c_6576_3031) % m as u64,
                    skip: hash64(name, 0x6d61_676c_6576_3032) % (m as u64 - 1) + 1,
                    credit: 0,
                    weight: u64::from(*w),
                }
            })
            .collect();
        let mut entries = vec![EMPTY; m];
        let mut filled = 0usize;
        'outer: loop {
            for (i, p) in perms.iter_mut().enumerate() {
                if p.weight == 0 {
                    continue;
                }
                p.credit += p.weight;
                if p.credit < max_w {
                    continue;
                }
                p.credit -= max_w;
                let m64 = m as u64;
                loop {
                    let slot = p.pos as usize;
                    p.pos += p.skip;
                    if p.pos >= m64 {
                        p.pos -= m64;
                    }
                    if entries[slot] == EMPTY {
                        entries[slot] = i as u32;
                        filled += 1;
                        break;
                    }
                }
                if filled == m {
                    break 'outer;
                }
            }
        }
        Table { entries }
    }

    /// Number of slots (0 for an empty table).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when the table has no backend.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The backend owning the slot of `key_hash` (consistent hashing).
    pub fn lookup(&self, key_hash: u64) -> Option<usize> {
        if self.entries.is_empty() {
            return None;
        }
        Some(self.entries[(key_hash % self.entries.len() as u64) as usize] as usize)
    }

    /// The backend at position `counter` of the sequential sweep (weighted
    /// round robin).
    pub fn at(&self, counter: u64) -> Option<usize> {
        if self.entries.is_empty() {
            return None;
        }
        Some(self.entries[(counter % self.entries.len() as u64) as usize] as usize)
    }

    /// Slots owned by each of `n` backends.
    pub fn counts(&self, n: usize) -> Vec<usize> {
        let mut c = vec![0; n];
        for &e in &self.entries {
            c[e as usize] += 1;
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::hash64;
    use proptest::prelude::*;

    fn names(n: usize) -> Vec<(String, u32)> {
        (0..n).map(|i| (format!("10.0.0.{i}:80"), 1)).collect()
    }

    #[test]
    fn primes() {
        assert_eq!(next_prime(100), 101);
        for &s in SIZES {
            assert!(is_prime(s), "{s}");
        }
        assert_eq!(table_size(3), 509);
        assert_eq!(table_size(1000), 131071);
        assert_eq!(next_prime(300), 307);
        assert!(is_prime(65537));
        assert!(!is_prime(65535));
    }

    #[test]
    fn empty_and_zero_weights() {
        let t = Table::build::<&str>(&[]);
        assert!(t.is_empty());
        assert_eq!(t.lookup(5), None);
        let t = Table::build(&[("a", 0)]);
        assert_eq!(t.at(0), None);
    }

    #[test]
    fn weights_1_2_3_exact_per_sweep() {
        let t = Table::build(&[("a", 1), ("b", 2), ("c", 3)]);
        let c = t.counts(3);
        let m = t.len() as f64;
        for (i, w) in [1.0, 2.0, 3.0].iter().enumerate() {
            let share = c[i] as f64 / m;
            let want = w / 6.0;
            assert!((share - want).abs() / want < 0.02, "{i}: {share} vs {want}");
        }
    }

    #[test]
    fn zero_weight_backend_gets_nothing() {
        let t = Table::build(&[("a", 1), ("b", 0), ("c", 1)]);
        assert_eq!(t.counts(3)[1], 0);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(40))]

        /// Shares follow weights within a few percent.
        #[test]
        fn shares_follow_weights(ws in proptest::collection::vec(1u32..=10, 1..30)) {
            let backends: Vec<(String, u32)> =
                ws.iter().enumerate().map(|(i, w)| (format!("s{i}"), *w)).collect();
            let t = Table::build(&backends);
            let total: u32 = ws.iter().sum();
            let c = t.counts(ws.len());
            for (i, w) in ws.iter().enumerate() {
                let want = t.len() as f64 * f64::from(*w) / f64::from(total);
                let got = c[i] as f64;
                prop_assert!((got - want).abs() <= want * 0.05 + 2.0,
                    "backend {} weight {} got {} want {}", i, w, got, want);
            }
        }

        /// Same input, same table: every node computes the same mapping.
        #[test]
        fn deterministic(n in 1usize..40) {
            let b = names(n);
            prop_assert_eq!(Table::build(&b), Table::build(&b));
        }

        /// Removing one of N backends moves its own keys and few others.
        #[test]
        fn removal_disrupts_about_one_nth(n in 3usize..40, victim_seed in 0usize..1000) {
            let b = names(n);
            let victim = victim_seed % n;
            let before = Table::build(&b);
            let mut after_b = b.clone();
            after_b[victim].1 = 0;
            let after = Table::build(&after_b);
            let keys = 20_000u64;
            let mut moved_other = 0u64;
            let mut moved = 0u64;
            for k in 0..keys {
                let h = hash64(&k.to_le_bytes(), 99);
                let old = before.lookup(h).unwrap();
                let new = after.lookup(h).unwrap();
                prop_assert_ne!(new, victim);
                if old != new {
                    moved += 1;
                    if old != victim {
                        moved_other += 1;
                    }
                }
            }
            let frac = moved as f64 / keys as f64;
            let expected = 1.0 / n as f64;
            prop_assert!(frac < expected * 1.5 + 0.02, "moved {} expected ~{}", frac, expected);
            // Maglev's own churn: a few % of other keys move when a table
            // is rebuilt (PoolRuntime avoids even that for availability
            // changes with its primary/fallback pair).
            prop_assert!((moved_other as f64 / keys as f64) < 0.06,
                "keys of other servers moved: {}", moved_other);
        }
    }
}
