//! How many flow buckets move when a node joins or leaves a cluster of N
//! (bench/cluster.sh runs it): for N in 3, 8 and 32 nodes of equal
//! weight, the share of buckets whose owner changes, against 1/N.

use convoy_cluster::buckets::{owners, Candidate, BUCKETS};

fn names(n: usize) -> Vec<Candidate> {
    (0..n)
        .map(|i| Candidate {
            name: format!("node-{i}"),
            weight: 100,
        })
        .collect()
}

fn by_name(c: &[Candidate]) -> Vec<Option<String>> {
    owners("web", c)
        .into_iter()
        .map(|o| o.map(|i| c[usize::from(i)].name.clone()))
        .collect()
}

fn main() {
    println!("nodes  event  moved  share   1/N     other moves");
    for n in [3usize, 8, 32] {
        let before = by_name(&names(n));
        let after_join = by_name(&names(n + 1));
        let after_leave = by_name(&names(n - 1));
        for (event, after, want) in [("join", &after_join, n + 1), ("leave", &after_leave, n)] {
            let moved = before.iter().zip(after).filter(|(a, b)| a != b).count();
            // Moves between two nodes that stay (should be none).
            let changed_node = if event == "join" {
                format!("node-{n}")
            } else {
                format!("node-{}", n - 1)
            };
            let other = before
                .iter()
                .zip(after)
                .filter(|(a, b)| a != b)
                .filter(|(a, b)| {
                    a.as_deref() != Some(changed_node.as_str())
                        && b.as_deref() != Some(changed_node.as_str())
                })
                .count();
            println!(
                "{n:>5}  {event:<5}  {moved:>5}  {:>5.2}%  {:>5.2}%  {other}",
                100.0 * moved as f64 / BUCKETS as f64,
                100.0 / want as f64
            );
        }
    }
}
