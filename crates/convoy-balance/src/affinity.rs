//! Affinity keys: which part of the client address decides its server.
//! `client` uses the whole address; `network` the /24 of an IPv4 address or
//! the /56 of an IPv6 one, so clients behind a farm of proxies that share a
//! network stay together (WLBS "class C" affinity).

use std::net::IpAddr;

use crate::hash::hash64;

/// How a listener keeps a client on one server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AffinityKind {
    /// No affinity: weighted round robin.
    None,
    /// Same client address → same server.
    Client,
    /// Same /24 (IPv4) or /56 (IPv6) → same server.
    Network,
}

const AFFINITY_SEED: u64 = 0x636f_6e76_6f79_0001;

/// The hash key for `ip` under `kind`, or `None` for no affinity.
/// IPv4-mapped IPv6 addresses are treated as the IPv4 address.
pub fn affinity_key(kind: AffinityKind, ip: IpAddr) -> Option<u64> {
    let ip = match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    };
    match (kind, ip) {
        (AffinityKind::None, _) => None,
        (AffinityKind::Client, IpAddr::V4(a)) => Some(hash64(&a.octets(), AFFINITY_SEED)),
        (AffinityKind::Client, IpAddr::V6(a)) => Some(hash64(&a.octets(), AFFINITY_SEED)),
        (AffinityKind::Network, IpAddr::V4(a)) => Some(hash64(&a.octets()[..3], AFFINITY_SEED)),
        (AffinityKind::Network, IpAddr::V6(a)) => Some(hash64(&a.octets()[..7], AFFINITY_SEED)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn network_groups_slash_24() {
        let k = |s| affinity_key(AffinityKind::Network, ip(s));
        assert_eq!(k("127.0.5.1"), k("127.0.5.200"));
        assert_ne!(k("127.0.5.1"), k("127.0.6.1"));
    }

    #[test]
    fn network_groups_slash_56() {
        let k = |s| affinity_key(AffinityKind::Network, ip(s));
        assert_eq!(k("2001:db8:0:1100::1"), k("2001:db8:0:11ff::9"));
        assert_ne!(k("2001:db8:0:1100::1"), k("2001:db8:0:1200::1"));
    }

    #[test]
    fn client_distinguishes_hosts_and_maps_v4_in_v6() {
        let k = |s| affinity_key(AffinityKind::Client, ip(s));
        assert_ne!(k("127.0.5.1"), k("127.0.5.2"));
        assert_eq!(k("127.0.5.1"), k("::ffff:127.0.5.1"));
        assert_eq!(affinity_key(AffinityKind::None, ip("127.0.0.1")), None);
    }
}
