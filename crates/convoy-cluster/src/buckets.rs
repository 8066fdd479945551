//! Ownership of client flows: each listener's flows are cut into
//! [`BUCKETS`] buckets (by a hash of the client address, its network, or
//! address and port, as the listener's affinity says), and each bucket has
//! exactly one owner among the nodes that may take flows. Every node
//! computes the same owners from the same members and load weights, with
//! no message about buckets at all.
//!
//! The owner of a bucket is chosen by weighted rendezvous hashing
//! (highest random weight): each candidate scores `-w / ln(u)`, `u` a
//! stable hash of (listener, bucket, node name) in (0, 1), and the highest
//! score wins. A node gets a share of the buckets in proportion to its
//! weight, and when a node joins or leaves only the buckets it takes or
//! gives up move: about 1/N of them, nothing else.

use convoy_balance::hash::{fmix64, hash64};

/// Buckets per listener.
pub const BUCKETS: usize = 4096;

/// A node that may own buckets of a listener.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// Its name (unique in the cluster).
    pub name: String,
    /// Its load weight for the listener (0: owns none).
    pub weight: u32,
}

/// The owner of every bucket of one listener: an index into the
/// candidates given, or `None` for every bucket when no candidate has a
/// weight.
pub fn owners(listener: &str, candidates: &[Candidate]) -> Vec<Option<u16>> {
    let seeds: Vec<u64> = candidates
        .iter()
        .map(|c| hash64(c.name.as_bytes(), hash64(listener.as_bytes(), 0x6275_636b)))
        .collect();
    (0..BUCKETS)
        .map(|b| {
            let mut best: Option<(f64, u16)> = None;
            for (i, (c, seed)) in candidates.iter().zip(&seeds).enumerate() {
                if c.weight == 0 {
                    continue;
                }
                let score = score(
                    fmix64(seed ^ (b as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)),
                    c.weight,
                );
                if best.is_none_or(|(s, _)| score > s) {
                    best = Some((score, i as u16));
                }
            }
            best.map(|(_, i)| i)
        })
        .collect()
}

/// The weighted rendezvous score of a hash: `-w / ln(u)` with `u` the
/// hash's top 53 bits as a number in (0, 1).
fn score(h: u64, weight: u32) -> f64 {
    let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    -f64::from(weight) / u.ln()
}

/// How many buckets each candidate owns.
pub fn counts(owners: &[Option<u16>], candidates: usize) -> Vec<usize> {
    let mut n = vec![0; candidates];
    for o in owners.iter().flatten() {
        n[usize::from(*o)] += 1;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn nodes(names: &[&str]) -> Vec<Candidate> {
        names
            .iter()
            .map(|n| Candidate {
                name: n.to_string(),
                weight: 100,
            })
            .collect()
    }

    /// Owners by name, to compare tables over different candidate lists.
    fn by_name(l: &str, c: &[Candidate]) -> Vec<Option<String>> {
        owners(l, c)
            .into_iter()
            .map(|o| o.map(|i| c[usize::from(i)].name.clone()))
            .collect()
    }

    #[test]
    fn shares_follow_the_weights() {
        let mut c = nodes(&["a", "b", "c"]);
        c[2].weight = 200;
        let n = counts(&owners("web", &c), 3);
        assert_eq!(n.iter().sum::<usize>(), BUCKETS);
        // 1:1:2 within a few percent of the buckets.
        for (got, want) in n.iter().zip([1024.0, 1024.0, 2048.0]) {
            assert!((*got as f64 - want).abs() < 0.05 * BUCKETS as f64, "{n:?}");
        }
        // Another listener splits differently.
        assert_ne!(owners("web", &c), owners("api", &c));
        // No weight, no owner.
        let none: Vec<Candidate> = vec![Candidate {
            name: "a".into(),
            weight: 0,
        }];
        assert!(owners("web", &none).iter().all(Option::is_none));
    }

    #[test]
    fn the_same_members_in_any_order_give_the_same_owners() {
        let a = by_name("web", &nodes(&["a", "b", "c", "d"]));
        let b = by_name("web", &nodes(&["d", "b", "a", "c"]));
        assert_eq!(a, b);
    }

    proptest! {
        /// A join or a leave moves only the buckets the node takes or
        /// gives up: about 1/N of them, and never one between two nodes
        /// that stay.
        #[test]
        fn a_join_moves_about_one_nth(n in 2usize..24, extra in 0u32..1000) {
            let names: Vec<String> = (0..n).map(|i| format!("node-{i}-{extra}")).collect();
            let refs: Vec<&str> = names.iter().map(String::as_str).collect();
            let before = by_name("web", &nodes(&refs));
            let mut more = refs.clone();
            let newcomer = format!("new-{extra}");
            more.push(&newcomer);
            let after = by_name("web", &nodes(&more));
            let mut moved = 0;
            for (b, a) in before.iter().zip(&after) {
                if b != a {
                    prop_assert_eq!(a.as_deref(), Some(newcomer.as_str()), "a bucket moved between two nodes that stay");
                    moved += 1;
                }
            }
            let share = BUCKETS as f64 / (n + 1) as f64;
            prop_assert!((moved as f64) < share * 1.25 + 0.01 * BUCKETS as f64, "moved {} of {}, 1/N = {}", moved, BUCKETS, share);
        }
    }
}
