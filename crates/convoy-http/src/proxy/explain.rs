//! The `X-Convoy-Explain` answer: where a request went and how every
//! candidate server looked at that moment.

use convoy_core::PoolRuntime;

/// The `X-Convoy-Explain` answer: where the request went and how every
/// candidate looked at that moment.
pub(super) fn explanation(
    pool: &PoolRuntime,
    idx: usize,
    class: usize,
    cost: u32,
    queued_ms: u64,
    tried: &[usize],
) -> String {
    use std::fmt::Write as _;
    let s = &pool.servers[idx];
    let mut out = format!(
        "pool={}; server={}; tier={}; algorithm={}; class={class}; cost={cost}; queued_ms={queued_ms}; retries={}; candidates=",
        pool.name,
        s.cfg.name,
        s.cfg.tier,
        match pool.cfg.algorithm {
            convoy_config::Algorithm::RoundRobin => "round_robin",
            convoy_config::Algorithm::LeastOutstanding => "least_outstanding",
            convoy_config::Algorithm::Qos => "qos",
            convoy_config::Algorithm::Hash => "hash",
        },
        tried.len()
    );
    for (i, e) in pool.servers.iter().enumerate() {
        let st = &e.state;
        let state = if !st.is_up() {
            "down"
        } else if st.is_ejected() {
            "ejected"
        } else if st.admin() != convoy_core::AdminState::Enabled {
            "not-enabled"
        } else {
            "up"
        };
        let (lat, err) = st.qos();
        let _ = write!(
            out,
            "{}{}({state},tier={},in_flight={},lat_ms={:.1},err={:.2})",
            if i == 0 { "" } else { "," },
            e.cfg.name,
            e.cfg.tier,
            st.in_flight(),
            lat / 1000.0,
            err
        );
    }
    out.retain(|c| c.is_ascii() && !c.is_ascii_control());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_explanation_names_the_choice_and_every_candidate() {
        let cfg: convoy_config::Pool = toml::from_str(
            "algorithm = \"qos\"\n\
             [[servers]]\nname = \"a\"\naddress = \"127.0.0.1:1\"\n\
             [[servers]]\nname = \"b\"\naddress = \"127.0.0.1:2\"\ntier = 1\n",
        )
        .unwrap();
        let p = PoolRuntime::new("web", &cfg, None);
        p.servers[1].state.set_up(false);
        let text = explanation(&p, 0, 2, 3, 7, &[1]);
        assert!(
            text.starts_with("pool=web; server=a; tier=0; algorithm=qos; class=2; cost=3; queued_ms=7; retries=1; candidates=a(up,"),
            "{text}"
        );
        assert!(text.contains(",b(down,tier=1,"), "{text}");
    }
}
