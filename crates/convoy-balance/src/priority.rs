//! `single` filtering mode (WLBS "single host"): all traffic goes to the
//! highest-priority available server, where priority 1 is the highest.
//! When it fails the next one in priority order takes over; when a better
//! server returns, `automatic` failback moves new traffic back to it while
//! `manual` failback stays on the current server until it fails or an
//! operator moves it.

/// Failback policy of a `single`-mode listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failback {
    /// Return to the highest-priority server as soon as it is available.
    Automatic,
    /// Stay on the current server while it is available.
    Manual,
}

/// Picks the index of the server to use. `candidates` holds, per server,
/// its priority and whether it is available now; `current` is the server
/// used so far (for manual failback).
pub fn pick_single(
    candidates: &[(u32, bool)],
    current: Option<usize>,
    failback: Failback,
) -> Option<usize> {
    if failback == Failback::Manual {
        if let Some(c) = current {
            if candidates.get(c).is_some_and(|(_, ok)| *ok) {
                return Some(c);
            }
        }
    }
    candidates
        .iter()
        .enumerate()
        .filter(|(_, (_, ok))| *ok)
        .min_by_key(|(_, (prio, _))| *prio)
        .map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn highest_priority_available_wins() {
        let c = [(3, true), (1, true), (2, true)];
        assert_eq!(pick_single(&c, None, Failback::Automatic), Some(1));
        let c = [(3, true), (1, false), (2, true)];
        assert_eq!(pick_single(&c, Some(1), Failback::Automatic), Some(2));
        assert_eq!(pick_single(&[(1, false)], None, Failback::Automatic), None);
    }

    #[test]
    fn failback_automatic_vs_manual() {
        // server 1 (prio 1) came back while we were on server 2 (prio 2)
        let c = [(3, true), (1, true), (2, true)];
        assert_eq!(pick_single(&c, Some(2), Failback::Automatic), Some(1));
        assert_eq!(pick_single(&c, Some(2), Failback::Manual), Some(2));
        // manual still fails over when the current one fails
        let c = [(3, true), (1, true), (2, false)];
        assert_eq!(pick_single(&c, Some(2), Failback::Manual), Some(1));
    }
}
