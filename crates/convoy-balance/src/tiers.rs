//! Tiers of servers (primary, mirrors, backups): tier 0 takes the traffic
//! until it is saturated — every available server at its high-water mark,
//! or the tier's quality worse than a threshold — then tier 1, and so on.
//! When every tier is saturated the request goes to the queue of the lowest
//! tier that has an available server.

/// What the tier selector knows of one tier.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TierLoad {
    /// Tier number (0 first).
    pub tier: u32,
    /// Some server of the tier is available (up, enabled, not ejected).
    pub available: bool,
    /// Every available server is full, or the tier's QoS is over threshold.
    pub saturated: bool,
}

/// The tier to send a request to, and whether it must queue there.
pub fn pick_tier(tiers: &[TierLoad]) -> Option<(u32, bool)> {
    let mut sorted: Vec<&TierLoad> = tiers.iter().filter(|t| t.available).collect();
    sorted.sort_by_key(|t| t.tier);
    if let Some(t) = sorted.iter().find(|t| !t.saturated) {
        return Some((t.tier, false));
    }
    sorted.first().map(|t| (t.tier, true))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(tier: u32, available: bool, saturated: bool) -> TierLoad {
        TierLoad {
            tier,
            available,
            saturated,
        }
    }

    #[test]
    fn spills_over_in_order() {
        assert_eq!(
            pick_tier(&[t(1, true, false), t(0, true, false)]),
            Some((0, false))
        );
        assert_eq!(
            pick_tier(&[t(0, true, true), t(1, true, false)]),
            Some((1, false))
        );
        assert_eq!(
            pick_tier(&[t(0, false, false), t(1, true, false)]),
            Some((1, false))
        );
        assert_eq!(
            pick_tier(&[t(0, true, true), t(1, true, true)]),
            Some((0, true))
        );
        assert_eq!(pick_tier(&[t(0, false, false)]), None);
    }
}
