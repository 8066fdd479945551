//! Semantic checks that serde cannot do: references between sections,
//! uniqueness, ranges. Each problem is a (key path, reason) pair; the caller
//! turns the path into a line and column.

use std::collections::{HashMap, HashSet};

use crate::{Affinity, CheckKind, Config, Protocol};

pub(crate) fn validate(cfg: &Config) -> Vec<(String, String)> {
    let mut errs = Vec::new();
    let mut err = |path: String, reason: String| errs.push((path, reason));

    if cfg.listeners.is_empty() {
        err(
            "listeners".into(),
            "no listeners defined: add at least one [[listeners]] table".into(),
        );
    }
    if let Some(c) = &cfg.cluster {
        validate_cluster(cfg, c, &mut err);
    }
    if cfg.node.drain_timeout.get().is_zero() {
        err(
            "node.drain_timeout".into(),
            "must be greater than 0s".into(),
        );
    }

    let a = &cfg.admin;
    let sources = [
        a.token.is_some(),
        a.token_env.is_some(),
        a.token_file.is_some(),
    ]
    .iter()
    .filter(|x| **x)
    .count();
    if sources > 1 {
        err(
            "admin".into(),
            "set only one of token, token_env, token_file".into(),
        );
    }
    if a.token.as_deref().is_some_and(|t| t.trim().len() < 8) {
        err("admin.token".into(), "must be at least 8 characters".into());
    }
    if let Some(t) = &a.tls {
        if t.certificates.is_empty() {
            err(
                "admin.tls.certificates".into(),
                "give at least one certificate".into(),
            );
        }
        if t.certificates.iter().filter(|c| c.names.is_empty()).count() > 1 {
            err(
                "admin.tls.certificates".into(),
                "only one certificate may be the default (without names)".into(),
            );
        }
    }
    if a.enabled && sources == 0 && !a.address.ip().is_loopback() {
        err(
            "admin.address".into(),
            format!("{} is not a loopback address: set admin.token (or token_env, token_file) so that the admin API is not open to the network", a.address),
        );
    }

    let mut names = HashSet::new();
    // TCP and HTTP listeners both bind TCP sockets: they share one
    // address space, UDP has its own.
    let transport = |p: Protocol| p == Protocol::Udp;
    let mut bound: HashMap<(bool, std::net::SocketAddr), usize> = HashMap::new();
    for (i, l) in cfg.listeners.iter().enumerate() {
        let p = |k: &str| format!("listeners[{i}].{k}");
        if !names.insert(l.name.as_str()) {
            err(p("name"), format!("duplicate listener name {:?}", l.name));
        }
        if !cfg.pools.contains_key(&l.pool) {
            let known: Vec<&str> = cfg.pools.keys().map(String::as_str).collect();
            err(
                p("pool"),
                format!(
                    "unknown pool {:?} (defined pools: {})",
                    l.pool,
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                ),
            );
        }
        let count = u32::from(l.address.last) - u32::from(l.address.first) + 1;
        if count > 1024 {
            err(
                p("address"),
                format!("port range of {count} ports is too large (at most 1024)"),
            );
        } else {
            for sa in l.address.sockets() {
                if let Some(other) = bound.insert((transport(l.protocol), sa), i) {
                    err(
                        p("address"),
                        format!("{sa} is also bound by listeners[{other}]"),
                    );
                    break;
                }
                // A wildcard address and a specific one of the same family
                // on the same port cannot both be bound.
                let clash = bound.iter().find(|((proto, other), j)| {
                    **j != i
                        && *proto == transport(l.protocol)
                        && other.port() == sa.port()
                        && other.is_ipv4() == sa.is_ipv4()
                        && (other.ip().is_unspecified() != sa.ip().is_unspecified())
                });
                if let Some(((_, other), j)) = clash {
                    err(
                        p("address"),
                        format!("{sa} overlaps {other} of listeners[{j}] (a wildcard address covers every address on its port)"),
                    );
                    break;
                }
            }
        }
        if l.affinity == Affinity::None && l.affinity_timeout.is_some() {
            err(
                p("affinity_timeout"),
                "affinity_timeout needs affinity = \"client\" or \"network\"".into(),
            );
        }
        if l.responses.is_some() && l.protocol != crate::Protocol::Udp {
            err(p("responses"), "only applies to UDP listeners".into());
        }
        if l.same_port && l.mode == crate::FilterMode::Disabled {
            err(
                p("same_port"),
                "has no effect on a disabled listener".into(),
            );
        }
        for (j, r) in l.routes.iter().enumerate() {
            let rp = |k: &str| format!("listeners[{i}].routes[{j}].{k}");
            if l.protocol != Protocol::Http {
                err(rp("name"), "routes need protocol = \"http\"".into());
            }
            if let Some(pool) = &r.pool {
                if !cfg.pools.contains_key(pool) {
                    err(rp("pool"), format!("unknown pool {pool:?}"));
                }
            }
            if r.priority > 7 {
                err(
                    rp("priority"),
                    format!("priority {} is out of range 0-7", r.priority),
                );
            }
            if r.cost == 0 {
                err(rp("cost"), "must be at least 1".into());
            }
            // The conditions are parsed by the compiler of the runtime
            // model: what is accepted here is what compiles.
            if let Err(problems) = crate::compiled::conditions(r) {
                for (k, why) in problems {
                    err(rp(k), why);
                }
            }
            validate_route_rewrite(r, &rp, &mut err);
        }
        validate_listener_rewrite(l, &p, &mut err);
        if l.protocol == Protocol::Http {
            if l.mode == crate::FilterMode::Single {
                err(
                    p("mode"),
                    "HTTP listeners balance per request: use server tiers (tier = 1 for backups) instead of mode = \"single\"".into(),
                );
            }
            if l.failback != crate::Failback::Automatic {
                err(
                    p("failback"),
                    "only applies to mode = \"single\" (TCP and UDP)".into(),
                );
            }
            if l.same_port {
                err(
                    p("same_port"),
                    "only applies to TCP and UDP listeners".into(),
                );
            }
        }
        for (k, v) in [
            ("header_timeout", l.header_timeout),
            ("body_timeout", l.body_timeout),
            ("response_timeout", l.response_timeout),
            ("request_timeout", l.request_timeout),
        ] {
            let Some(v) = v else { continue };
            if l.protocol != Protocol::Http {
                err(p(k), "only applies to protocol = \"http\" listeners".into());
            } else if v.get().is_zero() {
                err(p(k), "must be greater than 0s".into());
            }
        }
        if l.park_after.is_some() && l.protocol == Protocol::Udp {
            err(
                p("park_after"),
                "only applies to protocol = \"tcp\" and \"http\" listeners".into(),
            );
        }
        if l.cache.is_some() && l.protocol != Protocol::Http {
            err(p("cache"), "the cache needs protocol = \"http\"".into());
        }
        if let Some(r) = &l.rate_limit {
            if !(r.per_second > 0.0 && r.per_second.is_finite()) {
                err(p("rate_limit.per_second"), "must be greater than 0".into());
            }
            if r.burst.is_some_and(|b| !(b >= 1.0 && b.is_finite())) {
                err(p("rate_limit.burst"), "must be at least 1".into());
            }
            if l.protocol == Protocol::Udp {
                err(p("rate_limit"), "applies to TCP and HTTP listeners".into());
            }
        }
        if l.max_connections_per_ip > 0 && l.protocol == Protocol::Udp {
            err(
                p("max_connections_per_ip"),
                "applies to TCP and HTTP listeners".into(),
            );
        }
        if let Some(c) = &l.compression {
            if l.protocol != Protocol::Http {
                err(
                    p("compression"),
                    "compression needs protocol = \"http\"".into(),
                );
            }
            for a in &c.algorithms {
                if !["br", "zstd", "gzip"].contains(&a.as_str()) {
                    err(
                        p("compression.algorithms"),
                        format!("{a:?} is not one of \"br\", \"zstd\", \"gzip\""),
                    );
                }
            }
            if c.algorithms.is_empty() {
                err(
                    p("compression.algorithms"),
                    "name at least one coding".into(),
                );
            }
        }
        if let Some(t) = &l.tls {
            if l.protocol != Protocol::Http {
                err(p("tls"), "TLS termination needs protocol = \"http\"".into());
            }
            if t.certificates.is_empty() {
                err(
                    p("tls.certificates"),
                    "give at least one certificate".into(),
                );
            }
            let defaults = t.certificates.iter().filter(|c| c.names.is_empty()).count();
            if defaults > 1 {
                err(
                    p("tls.certificates"),
                    "only one certificate may be the default (without names)".into(),
                );
            }
            if t.watch.is_some_and(|w| w.get().is_zero()) {
                err(p("tls.watch"), "must be greater than 0s".into());
            }
        }
        if l.protocol == Protocol::Http && l.affinity != Affinity::None {
            err(
                p("affinity"),
                "HTTP listeners balance per request: use the pool's algorithm = \"hash\"".into(),
            );
        }
        if l.protocol != Protocol::Tcp && l.proxy_protocol.is_some() {
            err(
                p("proxy_protocol"),
                "the PROXY protocol header is only sent on TCP (L4) listeners".into(),
            );
        }
        if l.max_connections == 0 {
            err(p("max_connections"), "must be at least 1".into());
        }
        if l.connect_timeout.get().is_zero() {
            err(p("connect_timeout"), "must be greater than 0s".into());
        }
        if l.idle_timeout.is_some_and(|d| d.get().is_zero()) {
            err(p("idle_timeout"), "must be greater than 0s".into());
        }
    }

    for (name, pool) in &cfg.pools {
        let pp = |k: &str| format!("pools.{name}.{k}");
        if pool.servers.is_empty() {
            err(
                format!("pools.{name}"),
                "pool has no servers: add at least one [[pools.NAME.servers]]".into(),
            );
        }
        let h = &pool.health;
        if pool.outlier.max_percent > 100 {
            err(pp("outlier.max_percent"), "must be 0-100".into());
        }
        if pool.outlier.consecutive > 0 && pool.outlier.base_ejection.get().is_zero() {
            err(
                pp("outlier.base_ejection"),
                "must be greater than 0s".into(),
            );
        }
        if let Err(why) = crate::compiled::HashOn::parse(&pool.hash_on) {
            err(pp("hash_on"), why);
        }
        if let Some(c) = &pool.sticky_cookie {
            if c.is_empty()
                || !c
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            {
                err(
                    pp("sticky_cookie"),
                    "a cookie name of letters, digits, '-', '_' or '.'".into(),
                );
            }
        }
        let has_standby = pool.servers.iter().any(|s| s.standby);
        match &pool.standby {
            None if has_standby => err(
                format!("pools.{name}"),
                "servers marked standby = true need a [pools.NAME.standby] section".into(),
            ),
            Some(sb) => {
                if sb.queue_below > sb.queue_above {
                    err(
                        pp("standby.queue_below"),
                        "must not exceed queue_above".into(),
                    );
                }
                if let (Some(b), Some(a)) = (sb.latency_below, sb.latency_above) {
                    if b > a {
                        err(
                            pp("standby.latency_below"),
                            "must not exceed latency_above".into(),
                        );
                    }
                }
                if sb.hook.first().is_some_and(|p| p.is_empty()) {
                    err(pp("standby.hook"), "the program must not be empty".into());
                }
                if pool.servers.iter().all(|s| s.standby) && !pool.servers.is_empty() {
                    err(
                        pp("standby"),
                        "at least one server must not be a standby".into(),
                    );
                }
            }
            None => {}
        }
        if pool.queue_timeout.get().is_zero() {
            err(pp("queue_timeout"), "must be greater than 0s".into());
        }
        if h.check != CheckKind::None {
            if h.interval.get().is_zero() {
                err(pp("health.interval"), "must be greater than 0s".into());
            }
            if h.timeout.get().is_zero() {
                err(pp("health.timeout"), "must be greater than 0s".into());
            }
            if h.rise == 0 {
                err(pp("health.rise"), "must be at least 1".into());
            }
            if h.fall == 0 {
                err(pp("health.fall"), "must be at least 1".into());
            }
            if h.check == CheckKind::Http && pool.tls.is_some() {
                err(
                    pp("health.check"),
                    "HTTP health checks do not speak TLS: use check = \"tcp\" for a pool with tls"
                        .into(),
                );
            }
            if h.check == CheckKind::Http {
                if !h.path.starts_with('/') || h.path.bytes().any(|b| b <= b' ' || b == 0x7f) {
                    err(
                        pp("health.path"),
                        "must start with '/' and hold no spaces or control characters".into(),
                    );
                }
                if !(100..=599).contains(&h.expect_status) {
                    err(
                        pp("health.expect_status"),
                        "must be an HTTP status 100-599".into(),
                    );
                }
            }
            validate_app_check(h, &pp, &mut err);
        }
        if let Some(a) = &pool.agent {
            if a.port == 0 {
                err(pp("agent.port"), "must be a port 1-65535".into());
            }
            if a.interval.get().is_zero() || a.timeout.get().is_zero() {
                err(
                    pp("agent.interval"),
                    "interval and timeout must be greater than 0s".into(),
                );
            }
        }
        let mut snames: HashMap<&str, usize> = HashMap::new();
        let mut addrs: HashMap<std::net::SocketAddr, usize> = HashMap::new();
        let mut prios: HashMap<u32, usize> = HashMap::new();
        for (j, s) in pool.servers.iter().enumerate() {
            let sp = |k: &str| format!("pools.{name}.servers[{j}].{k}");
            if let Some(o) = snames.insert(&s.name, j) {
                err(
                    sp("name"),
                    format!("duplicate server name {:?} (also servers[{o}])", s.name),
                );
            }
            if let Some(o) = addrs.insert(s.address.0, j) {
                err(
                    sp("address"),
                    format!(
                        "duplicate server address {} (also servers[{o}])",
                        s.address.0
                    ),
                );
            }
            if let Some(o) = prios.insert(s.priority, j) {
                err(
                    sp("priority"),
                    format!(
                        "duplicate priority {} (also servers[{o}]); priorities must be unique in a pool \
                         and default to the server's position in the list",
                        s.priority
                    ),
                );
            }
            if s.weight == 0 || s.weight > 10_000 {
                err(
                    sp("weight"),
                    format!("weight {} is out of range 1-10000 (use enabled = false to remove a server)", s.weight),
                );
            }
            if s.zone.is_empty() {
                err(sp("zone"), "zone must not be empty".into());
            }
        }
    }
    errs
}

/// The `[cluster]` table.
/// Field operations: names, values, templates; `{server}` only where the
/// server is known (responses).
fn validate_ops(
    ops: &crate::HeaderOps,
    key: &str,
    response: bool,
    at: &dyn Fn(&str) -> String,
    err: &mut impl FnMut(String, String),
) {
    match crate::rewrite::field_ops(ops) {
        Err(problems) => {
            for (k, why) in problems {
                err(at(&format!("{key}.{k}")), why);
            }
        }
        Ok(_) if !response => {
            let all = ops.set.iter().map(|(n, v)| ("set", n, v));
            for (kind, n, v) in all.chain(ops.add.iter().map(|(n, v)| ("add", n, v))) {
                if crate::rewrite::Template::parse(v)
                    .is_ok_and(|t| t.uses(crate::rewrite::Var::Server))
                {
                    err(
                        at(&format!("{key}.{kind}.{n}")),
                        "{server} is known only in responses (response_headers)".into(),
                    );
                }
            }
        }
        Ok(_) => {}
    }
}

/// A listener's own rewriting settings (HTTP only).
fn validate_listener_rewrite(
    l: &crate::Listener,
    p: &dyn Fn(&str) -> String,
    err: &mut impl FnMut(String, String),
) {
    let http = l.protocol == Protocol::Http;
    let any = !l.request_headers.is_empty()
        || !l.response_headers.is_empty()
        || l.request_id.is_some()
        || !l.error_pages.is_empty();
    if any && !http {
        err(p("request_headers"), "request_headers, response_headers, request_id and error_pages need protocol = \"http\"".into());
        return;
    }
    validate_ops(&l.request_headers, "request_headers", false, p, err);
    validate_ops(&l.response_headers, "response_headers", true, p, err);
    if let Some(n) = &l.request_id {
        if !crate::rewrite::field_name(n) {
            err(
                p("request_id"),
                format!("{n:?} is not a field name (e.g. \"X-Request-Id\")"),
            );
        }
    }
    for status in l.error_pages.keys() {
        if !status
            .parse::<u16>()
            .is_ok_and(|s| (400..=599).contains(&s))
        {
            err(
                p(&format!("error_pages.{status}")),
                "a status 400-599, e.g. 503".into(),
            );
        }
    }
}

/// A route's rewriting settings.
fn validate_route_rewrite(
    r: &crate::Route,
    rp: &dyn Fn(&str) -> String,
    err: &mut impl FnMut(String, String),
) {
    validate_ops(&r.request_headers, "request_headers", false, rp, err);
    validate_ops(&r.response_headers, "response_headers", true, rp, err);
    if let Some(d) = &r.redirect {
        match crate::rewrite::Template::parse(&d.to) {
            Err(e) => err(rp("redirect.to"), e),
            Ok(t) if t.uses(crate::rewrite::Var::Server) => err(
                rp("redirect.to"),
                "{server} is not known for a redirect".into(),
            ),
            Ok(_) => {}
        }
        if d.to.is_empty() {
            err(rp("redirect.to"), "the Location to redirect to".into());
        }
        if ![301, 302, 303, 307, 308].contains(&d.status) {
            err(
                rp("redirect.status"),
                format!(
                    "{} is not a redirect status (301, 302, 303, 307, 308)",
                    d.status
                ),
            );
        }
    }
    if let Some(to) = &r.rewrite_prefix {
        if r.path_prefix.is_none() {
            err(
                rp("rewrite_prefix"),
                "needs the route's path_prefix (the part it replaces)".into(),
            );
        }
        if !(to.is_empty() || to.starts_with('/')) || to.bytes().any(|b| b <= b' ' || b == 0x7f) {
            err(
                rp("rewrite_prefix"),
                format!("{to:?} must be empty or a path starting with '/'"),
            );
        }
    }
}

/// The settings of the application checks (expect, redis, postgres).
fn validate_app_check(
    h: &crate::Health,
    pp: &dyn Fn(&str) -> String,
    err: &mut impl FnMut(String, String),
) {
    match h.check {
        CheckKind::Expect => {
            if h.expect.is_empty() {
                err(
                    pp("health.expect"),
                    "check = \"expect\" needs the text the answer must contain".into(),
                );
            }
            if !h.send.is_empty() && !h.send_hex.is_empty() {
                err(
                    pp("health.send_hex"),
                    "give send or send_hex, not both".into(),
                );
            }
            let digits: Vec<u8> = h
                .send_hex
                .bytes()
                .filter(|b| !b.is_ascii_whitespace())
                .collect();
            if !digits.len().is_multiple_of(2) || !digits.iter().all(u8::is_ascii_hexdigit) {
                err(
                    pp("health.send_hex"),
                    format!(
                        "{:?} is not hex bytes (e.g. \"50 49 4e 47 0d 0a\")",
                        h.send_hex
                    ),
                );
            }
        }
        CheckKind::Redis => {
            if let Some(r) = h
                .role
                .as_deref()
                .filter(|r| !["master", "replica"].contains(r))
            {
                err(
                    pp("health.role"),
                    format!("{r:?}: a redis check's role is \"master\" or \"replica\""),
                );
            }
        }
        CheckKind::Postgres => {
            if let Some(r) = h
                .role
                .as_deref()
                .filter(|r| !["primary", "standby"].contains(r))
            {
                err(
                    pp("health.role"),
                    format!("{r:?}: a postgres check's role is \"primary\" or \"standby\""),
                );
            }
            if h.user.is_empty() {
                err(
                    pp("health.user"),
                    "a postgres check logs in as a user".into(),
                );
            }
        }
        _ => {}
    }
    let app = matches!(h.check, CheckKind::Redis | CheckKind::Postgres);
    if !app && (h.password.is_some() || h.password_env.is_some()) {
        err(
            pp("health.password"),
            "only for check = \"redis\" or \"postgres\"".into(),
        );
    }
    if h.password.is_some() && h.password_env.is_some() {
        err(
            pp("health.password_env"),
            "give password or password_env, not both".into(),
        );
    }
    if h.role.is_some() && !app {
        err(
            pp("health.role"),
            "only for check = \"redis\" or \"postgres\"".into(),
        );
    }
    if h.check != CheckKind::Expect
        && (!h.send.is_empty() || !h.send_hex.is_empty() || !h.expect.is_empty())
    {
        err(
            pp("health.expect"),
            "send, send_hex and expect are for check = \"expect\"".into(),
        );
    }
}

/// The settings of `[cluster] steering`.
fn validate_steering(
    c: &crate::Cluster,
    p: &dyn Fn(&str) -> String,
    err: &mut impl FnMut(String, String),
) {
    if let Some(i) = &c.interface {
        if i.is_empty() || i.len() > 15 || i.contains(['/', ' ']) {
            err(
                p("interface"),
                format!("{i:?} is not an interface name (1-15 characters, no / or space)"),
            );
        }
    }
    match c.steering {
        crate::Steering::Shared if c.interface.is_none() => err(
            p("interface"),
            "steering = \"shared\" needs the interface that holds the virtual addresses (convoy adds them once its rules are in place and removes them at exit)".into(),
        ),
        crate::Steering::Ecmp => match &c.bgp {
            None => err(
                p("bgp"),
                "steering = \"ecmp\" needs [cluster.bgp] (local_as, neighbors)".into(),
            ),
            Some(b) => {
                if b.local_as == 0 {
                    err(p("bgp.local_as"), "must be an AS number (1-4294967295)".into());
                }
                if b.neighbors.is_empty() {
                    err(p("bgp.neighbors"), "at least one router to announce to".into());
                }
                for (i, n) in b.neighbors.iter().enumerate() {
                    if n.asn == 0 {
                        err(p(&format!("bgp.neighbors[{i}].as")), "must be an AS number (1-4294967295)".into());
                    }
                }
                if b.router_id.is_none() && !c.address.is_ipv4() {
                    err(p("bgp.router_id"), "needed when the cluster address is not IPv4".into());
                }
                if b.hold_time.get() < std::time::Duration::from_secs(3) {
                    err(p("bgp.hold_time"), "must be at least 3s (BGP's minimum)".into());
                }
                if b.bfd_interval.get() < std::time::Duration::from_millis(10) {
                    err(p("bgp.bfd_interval"), "must be at least 10ms".into());
                }
            }
        },
        _ => {}
    }
    if c.steering != crate::Steering::Ecmp && c.bgp.is_some() {
        err(p("bgp"), "used only with steering = \"ecmp\"".into());
    }
}

fn validate_cluster(cfg: &Config, c: &crate::Cluster, err: &mut impl FnMut(String, String)) {
    let p = |k: &str| format!("cluster.{k}");
    if c.priority == 0 {
        err(
            p("priority"),
            "must be at least 1 (1 is the highest)".into(),
        );
    }
    if c.name.is_empty() || c.name.len() > 64 || c.name.bytes().any(|b| !b.is_ascii_graphic()) {
        err(
            p("name"),
            format!("{:?} must be 1-64 visible ASCII characters", c.name),
        );
    }
    match (&c.key_file, &c.key_env) {
        (None, None) => err(
            p("key_file"),
            "the cluster needs a key: set key_file or key_env".into(),
        ),
        (Some(_), Some(_)) => err(p("key_env"), "set key_file or key_env, not both".into()),
        _ => {}
    }
    if c.address.port() == 0 {
        err(p("address"), "needs a port".into());
    }
    for (i, s) in c.seeds.iter().enumerate() {
        if *s == c.address {
            err(
                format!("cluster.seeds[{i}]"),
                "is this node's own address".into(),
            );
        }
    }
    if c.probe_interval.get() < std::time::Duration::from_millis(10) {
        err(p("probe_interval"), "must be at least 10ms".into());
    }
    if c.suspicion.get().is_zero() {
        err(p("suspicion"), "must be greater than 0s".into());
    }
    for (name, w) in &c.load_weight {
        if !cfg.listeners.iter().any(|l| &l.name == name) {
            err(
                format!("cluster.load_weight.{name}"),
                format!("no listener is named {name:?}"),
            );
        }
        if *w == 0 || *w > 10_000 {
            err(
                format!("cluster.load_weight.{name}"),
                format!("weight {w} is out of range 1-10000"),
            );
        }
    }
    if c.steering != crate::Steering::None {
        if c.vips.is_empty() {
            err(
                p("vips"),
                "steering needs the cluster's virtual addresses (vips)".into(),
            );
        } else if !cfg
            .listeners
            .iter()
            .any(|l| c.vips.contains(&l.address.ip) || l.address.ip.is_unspecified())
        {
            err(
                p("vips"),
                "no listener binds a virtual address (or 0.0.0.0)".into(),
            );
        }
    }
    if c.steering == crate::Steering::Shared && c.vips.iter().any(|v| v.is_ipv6()) {
        err(
            p("vips"),
            "steering = \"shared\" supports IPv4 virtual addresses".into(),
        );
    }
    validate_steering(c, &p, err);
    for (i, l) in cfg.listeners.iter().enumerate() {
        if l.protocol == crate::Protocol::Udp && l.address.sockets().any(|a| a == c.address) {
            err(
                format!("listeners[{i}].address"),
                format!("{} is the cluster's address", c.address),
            );
        }
    }
}
