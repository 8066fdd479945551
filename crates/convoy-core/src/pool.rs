//! A pool at run time: its servers (config + live state) and the selection
//! tables built from the servers that may take traffic now.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use convoy_balance::{affinity_key, ramp_weight, AffinityKind, Table};
use convoy_config::{Pool, Server};

use crate::state::{AdminState, ServerState};

/// An opaque, stable id of a server for sticky cookies (the name is not
/// revealed to clients).
fn sticky_id(name: &str) -> u64 {
    convoy_balance::hash::hash64(name.as_bytes(), 0x7374_6963_6b79_0001)
}

/// A server of a pool: its config and its live state.
#[derive(Debug)]
pub struct ServerEntry {
    /// Config of the server.
    pub cfg: Server,
    /// Live state (shared across snapshots).
    pub state: Arc<ServerState>,
}

/// Selection tables over the pool's available servers (indices into
/// `servers`).
#[derive(Debug)]
pub struct Tables {
    /// Weighted round-robin sweep, with slow-start weights (the same table
    /// as `hash` unless a server is ramping up).
    pub rr: Arc<Table>,
    /// Consistent hash over available servers at full weight: where the
    /// clients of an unavailable server go.
    pub hash: Arc<Table>,
    /// Servers that could take traffic when the tables were built.
    pub eligible: usize,
    /// True while some server is ramping up (tables need rebuilding).
    pub ramping: bool,
    /// The weights `hash` and `rr` were built from (by server index): a
    /// rebuild with the same weights keeps the tables.
    full: Vec<u32>,
    ramped: Vec<u32>,
}

/// A pool with its servers and current tables.
#[derive(Debug)]
pub struct PoolRuntime {
    /// Pool name.
    pub name: String,
    /// Pool config.
    pub cfg: Pool,
    /// What `algorithm = "hash"` hashes, compiled.
    pub hash_on: convoy_config::compiled::HashOn,
    /// Servers in config order.
    pub servers: Vec<ServerEntry>,
    by_name: HashMap<Arc<str>, usize>,
    /// Consistent hash over every configured server at its configured
    /// weight, whatever its state: health and admin changes never move the
    /// clients of servers that stay available.
    pub(crate) primary: Arc<Table>,
    tables: Arc<ArcSwap<Tables>>,
    /// Rebuilds started, and the newest whose tables are stored: a build
    /// finished late never replaces a newer one's tables.
    generation: AtomicU64,
    stored: Arc<std::sync::Mutex<u64>>,
    pub(crate) admission: Arc<crate::admission::Admission>,
    /// Smooth weighted round-robin scores (HTTP).
    pub(crate) swrr: std::sync::Mutex<convoy_balance::swrr::Swrr>,
    /// The tiers present, ascending.
    pub(crate) tiers: Vec<u32>,
    /// Sticky-cookie ids (a hash of the server name) → server index.
    sticky_ids: HashMap<u64, usize>,
    /// Standby servers take traffic while this is on.
    standby_on: std::sync::atomic::AtomicBool,
    counter: AtomicU64,
    /// Requests that met a tier saturated by latency (every 20th goes to
    /// it anyway).
    pub(crate) tier_probe: AtomicU64,
    /// Recent admission decisions, for `explain`.
    pub(crate) recent: std::sync::Mutex<std::collections::VecDeque<crate::admission::Decision>>,
    pub(crate) explain_sample: AtomicU64,
}

impl PoolRuntime {
    /// Builds the pool, taking live state from `prev` for servers of the
    /// same name.
    pub fn new(name: &str, cfg: &Pool, prev: Option<&PoolRuntime>) -> Self {
        let servers: Vec<ServerEntry> = cfg
            .servers
            .iter()
            .map(|s| {
                let admin = if !s.enabled {
                    AdminState::Disabled
                } else if s.drain {
                    AdminState::Draining
                } else {
                    AdminState::Enabled
                };
                let state = match prev.and_then(|p| p.server(&s.name)) {
                    Some(old) => {
                        let old = Arc::clone(&old.state);
                        old.set_admin(admin);
                        old
                    }
                    None => Arc::new(ServerState::new(name, &s.name, admin)),
                };
                ServerEntry {
                    cfg: s.clone(),
                    state,
                }
            })
            .collect();
        let by_name = servers
            .iter()
            .enumerate()
            .map(|(i, s)| (Arc::clone(&s.state.name), i))
            .collect();
        // The same servers at the same weights (a reload, an admin
        // command): the previous primary table is the same table.
        let same_servers = prev.is_some_and(|p| {
            p.servers.len() == servers.len()
                && p.servers
                    .iter()
                    .zip(&servers)
                    .all(|(a, b)| a.cfg.name == b.cfg.name && a.cfg.weight == b.cfg.weight)
        });
        let primary = match prev {
            Some(p) if same_servers => Arc::clone(&p.primary),
            _ => {
                let all: Vec<(&[u8], u32)> = servers
                    .iter()
                    .map(|s| (s.cfg.name.as_bytes(), s.cfg.weight))
                    .collect();
                Arc::new(Table::build(&all))
            }
        };
        let sticky_ids = servers
            .iter()
            .enumerate()
            .map(|(i, s)| (sticky_id(&s.cfg.name), i))
            .collect();
        let mut tiers: Vec<u32> = servers.iter().map(|s| s.cfg.tier).collect();
        tiers.sort_unstable();
        tiers.dedup();
        let aging_ms = cfg.queue_aging.get().as_millis() as u64;
        let pool = PoolRuntime {
            name: name.to_string(),
            hash_on: convoy_config::compiled::HashOn::of(cfg),
            cfg: cfg.clone(),
            servers,
            by_name,
            primary,
            tiers,
            sticky_ids,
            standby_on: std::sync::atomic::AtomicBool::new(
                prev.is_some_and(|p| p.standby_on.load(Ordering::Relaxed)),
            ),
            admission: match prev {
                Some(p) => {
                    p.admission
                        .update(cfg.queue_max, aging_ms, cfg.retry_budget);
                    Arc::clone(&p.admission)
                }
                None => Arc::new(crate::admission::Admission::new(
                    cfg.queue_max,
                    aging_ms,
                    cfg.retry_budget,
                )),
            },
            swrr: std::sync::Mutex::new(convoy_balance::swrr::Swrr::new(cfg.servers.len())),
            generation: AtomicU64::new(0),
            stored: Default::default(),
            // The same servers in the same order: the previous tables
            // serve until this pool's own are built.
            tables: Arc::new(match prev {
                Some(p) if same_servers => ArcSwap::new(p.tables.load_full()),
                _ => ArcSwap::from_pointee(Tables {
                    rr: Arc::new(Table::build::<&str>(&[])),
                    hash: Arc::new(Table::build::<&str>(&[])),
                    eligible: 0,
                    ramping: false,
                    full: Vec::new(),
                    ramped: Vec::new(),
                }),
            }),
            counter: AtomicU64::new(prev.map_or(0, |p| p.counter.load(Ordering::Relaxed))),
            tier_probe: AtomicU64::new(0),
            recent: Default::default(),
            explain_sample: AtomicU64::new(0),
        };
        if same_servers {
            pool.rebuild();
        } else {
            pool.rebuild_now();
        }
        pool
    }

    /// The sticky-cookie value naming server `i`.
    pub fn sticky_value(&self, i: usize) -> String {
        format!("{:016x}", sticky_id(&self.servers[i].cfg.name))
    }

    /// The server a sticky-cookie value names.
    pub fn by_sticky_value(&self, v: &str) -> Option<usize> {
        let id = u64::from_str_radix(v, 16).ok()?;
        self.sticky_ids.get(&id).copied()
    }

    /// Whether server `i` may take traffic as far as standby goes.
    pub fn standby_allows(&self, i: usize) -> bool {
        !self.servers[i].cfg.standby || self.standby_on.load(Ordering::Relaxed)
    }

    /// Switches the standby servers on or off; rebuild and wake after.
    pub fn set_standby(&self, on: bool) {
        self.standby_on.store(on, Ordering::Relaxed);
    }

    /// Standby servers are on.
    pub fn standby_is_on(&self) -> bool {
        self.standby_on.load(Ordering::Relaxed)
    }

    /// The server named `name`.
    pub fn server(&self, name: &str) -> Option<&ServerEntry> {
        self.by_name.get(name).map(|&i| &self.servers[i])
    }

    /// Index of the server named `name`.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.by_name.get(name).copied()
    }

    /// Rebuilds the tables from the servers' current state. Called by the
    /// control plane after health/admin changes and during slow start.
    /// A large pool's tables (at least [`BUILD_ASIDE_AT`] servers) are
    /// built on a blocking thread, inside a tokio runtime, so the thread
    /// that runs the control loop (and, with one worker, the requests)
    /// is not held for tens of milliseconds; requests use the previous
    /// tables meanwhile (a pick passes over servers no longer eligible).
    pub fn rebuild(&self) {
        self.rebuild_with(self.servers.len() >= BUILD_ASIDE_AT);
    }

    /// Rebuilds the tables at once, on this thread.
    pub fn rebuild_now(&self) {
        self.rebuild_with(false);
    }

    fn rebuild_with(&self, aside: bool) {
        let window = self.cfg.slow_start.get();
        let mut ramping = false;
        let mut eligible = 0;
        let mut full = Vec::with_capacity(self.servers.len());
        let mut ramped = Vec::with_capacity(self.servers.len());
        let mut all_full = true;
        // Weights are scaled ×100 so that a ramp from 10% to 100% has steps
        // even for weight 1; shares depend only on ratios.
        for (i, s) in self.servers.iter().enumerate() {
            let ok = s.state.is_eligible() && self.standby_allows(i);
            let w = if ok { s.cfg.weight * 100 } else { 0 };
            if ok {
                eligible += 1;
            }
            let rw = match s.state.up_for_ms() {
                Some(ms) if ok && Duration::from_millis(ms) < window => {
                    ramping = true;
                    ramp_weight(w, Duration::from_millis(ms), window)
                }
                _ => w,
            };
            all_full &= ok;
            full.push(w);
            ramped.push(rw);
        }
        let cur = self.tables.load();
        if cur.full == full
            && cur.ramped == ramped
            && cur.eligible == eligible
            && cur.ramping == ramping
            && !self.servers.is_empty()
        {
            return; // nothing a table depends on changed
        }
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        // Every server available at its configured weight, none ramping:
        // the table is the primary one (weights ×100 give the same
        // table), nothing to build.
        let build_needed = !all_full || ramping;
        let runtime = tokio::runtime::Handle::try_current().ok();
        let job = Build {
            // Names only when a table is to be built.
            names: if build_needed {
                self.servers
                    .iter()
                    .map(|s| Arc::clone(&s.state.name))
                    .collect()
            } else {
                Vec::new()
            },
            primary: all_full.then(|| Arc::clone(&self.primary)),
            eligible,
            ramping,
            full,
            ramped,
        };
        match runtime {
            Some(rt) if aside && build_needed => {
                let (tables, stored) = (Arc::clone(&self.tables), Arc::clone(&self.stored));
                rt.spawn_blocking(move || store(&tables, &stored, generation, job.build()));
            }
            _ => store(&self.tables, &self.stored, generation, job.build()),
        }
    }

    /// The current tables.
    pub fn tables(&self) -> arc_swap::Guard<Arc<Tables>> {
        self.tables.load()
    }

    /// Picks a server for a new connection from `client`, skipping those in
    /// `tried` (earlier attempts of the same connection). Returns an index
    /// into `servers`.
    pub fn pick(&self, affinity: AffinityKind, client: IpAddr, tried: &[usize]) -> Option<usize> {
        let t = self.tables.load();
        if t.eligible == 0 {
            return None;
        }
        if tried.is_empty() {
            if let Some(k) = affinity_key(affinity, client) {
                // The client's own server if it is available; otherwise the
                // fallback table spreads that server's clients (and only
                // them) over the others.
                for table in [&self.primary, &t.hash] {
                    if let Some(i) = table.lookup(k) {
                        if self.servers[i].state.is_eligible() && self.standby_allows(i) {
                            return Some(i);
                        }
                    }
                }
            }
        }
        // Weighted round robin; on retries, walk on past servers already tried
        // or no longer eligible (tables may lag a health change by a moment).
        for _ in 0..t.rr.len().min(4 * self.servers.len() + 16) {
            let c = self.counter.fetch_add(1, Ordering::Relaxed);
            let i = t.rr.at(c)?;
            if !tried.contains(&i)
                && (self.servers[i].state.is_eligible() && self.standby_allows(i))
            {
                return Some(i);
            }
        }
        // Rare: the sweep kept hitting tried servers; scan directly.
        self.servers
            .iter()
            .enumerate()
            .find(|(i, s)| !tried.contains(i) && s.state.is_eligible() && self.standby_allows(*i))
            .map(|(i, _)| i)
    }
}

/// Pools with at least this many servers build their tables on a
/// blocking thread (about 5 ms of work at this size, 58 ms at 10 000).
pub const BUILD_ASIDE_AT: usize = 1000;

/// What a table build needs, owned (it may run on another thread).
struct Build {
    names: Vec<Arc<str>>,
    /// The primary table, when every server is available at full weight.
    primary: Option<Arc<Table>>,
    eligible: usize,
    ramping: bool,
    full: Vec<u32>,
    ramped: Vec<u32>,
}

impl Build {
    fn build(self) -> Tables {
        let named = |w: &[u32]| -> Vec<(&[u8], u32)> {
            self.names
                .iter()
                .zip(w)
                .map(|(n, &w)| (n.as_bytes(), w))
                .collect()
        };
        let hash = match &self.primary {
            Some(p) => Arc::clone(p),
            None => Arc::new(Table::build(&named(&self.full))),
        };
        // Not ramping: one table for both (a large pool's table is MBs).
        let rr = if self.ramping {
            Arc::new(Table::build(&named(&self.ramped)))
        } else {
            Arc::clone(&hash)
        };
        Tables {
            rr,
            hash,
            eligible: self.eligible,
            ramping: self.ramping,
            full: self.full,
            ramped: self.ramped,
        }
    }
}

/// Stores the tables of rebuild `generation` unless a newer rebuild's
/// are already stored.
fn store(tables: &ArcSwap<Tables>, stored: &std::sync::Mutex<u64>, generation: u64, t: Tables) {
    let mut newest = stored.lock().unwrap_or_else(|e| e.into_inner());
    if generation > *newest {
        *newest = generation;
        tables.store(Arc::new(t));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use convoy_config::Config;

    fn pool(weights: &[u32]) -> PoolRuntime {
        let mut text = String::from(
            "[[listeners]]\naddress=\"127.0.0.1:1\"\npool=\"p\"\n[pools.p]\nslow_start=\"0s\"\n",
        );
        for (i, w) in weights.iter().enumerate() {
            text.push_str(&format!(
                "[[pools.p.servers]]\naddress=\"127.0.0.1:{}\"\nweight={w}\n",
                1000 + i
            ));
        }
        let c = Config::parse("t", &text).unwrap();
        PoolRuntime::new("p", &c.pools["p"], None)
    }

    /// Tables are shared, not rebuilt, when nothing they depend on
    /// changed, and the shared ones are the tables a build would give.
    #[test]
    fn tables_are_reused_only_when_equal() {
        let p = pool(&[1, 3, 2, 1]);
        let t = p.tables();
        assert!(Arc::ptr_eq(&t.hash, &p.primary), "all available: primary");
        assert!(Arc::ptr_eq(&t.rr, &t.hash));
        // The primary table (configured weights) is the table of the
        // weights ×100 the rebuild uses.
        let scaled: Vec<(&[u8], u32)> = p
            .servers
            .iter()
            .map(|s| (s.cfg.name.as_bytes(), s.cfg.weight * 100))
            .collect();
        let fresh = Table::build(&scaled);
        for k in 0..20_000u64 {
            let k = k.wrapping_mul(0x9e37_79b9_7f4a_7c15);
            assert_eq!(fresh.lookup(k), p.primary.lookup(k));
        }
        // A rebuild with nothing changed keeps the tables.
        p.rebuild();
        assert!(Arc::ptr_eq(&p.tables().hash, &t.hash));
        // A server down: a new hash table without it.
        p.servers[1].state.set_up(false);
        p.rebuild();
        let down = p.tables();
        assert!(!Arc::ptr_eq(&down.hash, &p.primary));
        assert_eq!(down.eligible, 3);
        for k in 0..20_000u64 {
            let k = k.wrapping_mul(0x9e37_79b9_7f4a_7c15);
            assert_ne!(down.hash.lookup(k), Some(1));
        }
        // Back up: the primary again; a reload of the same servers shares
        // it.
        p.servers[1].state.set_up(true);
        p.rebuild();
        assert!(Arc::ptr_eq(&p.tables().hash, &p.primary));
        let again = PoolRuntime::new("p", &p.cfg, Some(&p));
        assert!(Arc::ptr_eq(&again.primary, &p.primary));
        let mut cfg = p.cfg.clone();
        cfg.servers[2].weight = 5;
        let changed = PoolRuntime::new("p", &cfg, Some(&p));
        assert!(!Arc::ptr_eq(&changed.primary, &p.primary));
    }

    /// A large pool builds on a blocking thread; the tables come in, and a
    /// build that finishes after a newer rebuild is dropped.
    #[tokio::test(flavor = "current_thread")]
    async fn a_large_pool_builds_aside_and_the_newest_wins() {
        let p = pool(&vec![1; BUILD_ASIDE_AT + 500]);
        assert_eq!(p.tables().eligible, BUILD_ASIDE_AT + 500, "built at once");
        // Until `pool`'s tables count `eligible` servers (5 s at most).
        async fn wait_for_in(pool: &PoolRuntime, eligible: usize) -> bool {
            for _ in 0..500 {
                if pool.tables().eligible == eligible {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            false
        }
        let wait_for = |eligible: usize| wait_for_in(&p, eligible);
        p.servers[3].state.set_up(false);
        p.rebuild();
        assert!(
            wait_for(BUILD_ASIDE_AT + 499).await,
            "the aside build lands"
        );
        let t = p.tables();
        assert!(!Arc::ptr_eq(&t.hash, &p.primary));
        for k in 0..20_000u64 {
            assert_ne!(
                t.hash.lookup(k.wrapping_mul(0x9e37_79b9_7f4a_7c15)),
                Some(3)
            );
        }
        // Down (a build aside), then at once up again (the primary, stored
        // now): the build that finishes later must not win.
        p.servers[5].state.set_up(false);
        p.rebuild();
        p.servers[5].state.set_up(true);
        p.servers[3].state.set_up(true);
        p.rebuild();
        assert!(Arc::ptr_eq(&p.tables().hash, &p.primary));
        tokio::time::sleep(Duration::from_millis(300)).await;
        let t = p.tables();
        assert_eq!(
            t.eligible,
            BUILD_ASIDE_AT + 500,
            "the late build was dropped"
        );
        assert!(Arc::ptr_eq(&t.hash, &p.primary));
        // A reload that disables a server: the new pool serves with the
        // old tables until its own are built aside.
        let mut cfg = p.cfg.clone();
        cfg.servers[7].enabled = false;
        let next = PoolRuntime::new("p", &cfg, Some(&p));
        assert!(
            next.tables().eligible >= BUILD_ASIDE_AT + 499,
            "never empty"
        );
        assert!(
            wait_for_in(&next, BUILD_ASIDE_AT + 499).await,
            "the reloaded pool's tables are built"
        );
        assert!(Arc::ptr_eq(&next.primary, &p.primary));
    }

    #[test]
    fn round_robin_follows_weights() {
        let p = pool(&[1, 2, 3]);
        let mut n = [0u32; 3];
        for _ in 0..6000 {
            n[p.pick(AffinityKind::None, "127.0.0.1".parse().unwrap(), &[])
                .unwrap()] += 1;
        }
        for (i, w) in [1.0, 2.0, 3.0].iter().enumerate() {
            let share = f64::from(n[i]) / 6000.0;
            assert!((share - w / 6.0).abs() < 0.01, "{i} {share}");
        }
    }

    #[test]
    fn down_servers_are_skipped_and_retries_avoid_tried() {
        let p = pool(&[1, 1, 1]);
        p.servers[1].state.set_up(false);
        p.rebuild();
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        for _ in 0..100 {
            assert_ne!(p.pick(AffinityKind::None, ip, &[]), Some(1));
            assert_eq!(p.pick(AffinityKind::Client, ip, &[0]), Some(2));
        }
        assert_eq!(p.pick(AffinityKind::None, ip, &[0, 2]), None);
    }

    #[test]
    fn only_clients_of_an_unavailable_server_move() {
        let p = pool(&[1, 1, 1, 1, 1]);
        let ips: Vec<IpAddr> = (0..2000u32)
            .map(|i| IpAddr::from((0x7f00_0000u32 + i).to_be_bytes()))
            .collect();
        let before: Vec<usize> = ips
            .iter()
            .map(|ip| p.pick(AffinityKind::Client, *ip, &[]).unwrap())
            .collect();
        p.servers[2].state.set_up(false);
        p.rebuild();
        let mut moved = [0usize; 5];
        for (ip, b) in ips.iter().zip(&before) {
            let now = p.pick(AffinityKind::Client, *ip, &[]).unwrap();
            if *b == 2 {
                assert_ne!(now, 2);
                moved[now] += 1;
            } else {
                assert_eq!(now, *b, "a client of a healthy server moved");
            }
        }
        // The victim's clients spread over all the others.
        assert!(
            moved.iter().enumerate().all(|(i, m)| i == 2 || *m > 0),
            "{moved:?}"
        );
        // Back up: everyone is home again.
        p.servers[2].state.set_up(true);
        p.rebuild();
        for (ip, b) in ips.iter().zip(&before) {
            assert_eq!(p.pick(AffinityKind::Client, *ip, &[]).unwrap(), *b);
        }
    }

    #[test]
    fn slow_start_ramps_even_weight_one() {
        let text = "[[listeners]]\naddress=\"127.0.0.1:1\"\npool=\"p\"\n[pools.p]\nslow_start=\"1h\"\n\
                    [[pools.p.servers]]\naddress=\"127.0.0.1:2\"\n[[pools.p.servers]]\naddress=\"127.0.0.1:3\"\n";
        let c = Config::parse("t", text).unwrap();
        let p = PoolRuntime::new("p", &c.pools["p"], None);
        p.servers[1].state.set_up(false);
        p.servers[1].state.set_up(true); // just came back: ramp starts at 10%
        p.rebuild();
        assert!(p.tables().ramping);
        let counts = p.tables().rr.counts(2);
        let share = counts[1] as f64 / (counts[0] + counts[1]) as f64;
        assert!(
            share > 0.05 && share < 0.15,
            "returning server share {share}"
        );
        // The consistent hash is not ramped: affinity stays stable.
        let h = p.tables().hash.counts(2);
        assert!((h[0] as f64 / h[1] as f64 - 1.0).abs() < 0.05, "{h:?}");
    }

    #[test]
    fn live_state_carries_over_rebuilds() {
        let a = pool(&[1, 1]);
        let g = a.servers[0].state.open();
        let b = PoolRuntime::new("p", &a.cfg, Some(&a));
        assert_eq!(b.servers[0].state.active(), 1);
        assert!(Arc::ptr_eq(&a.servers[0].state, &b.servers[0].state));
        drop(g);
        assert_eq!(b.servers[0].state.active(), 0);
    }
}
