//! A builder for the configs integration tests start convoy with, instead
//! of TOML assembled with `format!`: listeners, routes, pools and servers
//! as values, any key set with [`Listener::set`] and its kin, printed as
//! TOML by [`Config::build`].
//!
//! ```
//! use convoy_testkit::config::{Config, Listener, Pool, Server};
//! let text = Config::new()
//!     .listener(Listener::http(8080, "web").set("body_timeout", "20s"))
//!     .pool(Pool::new("web").server(Server::new("a", "127.0.0.1:9001".parse().unwrap())))
//!     .build();
//! assert!(text.contains("body_timeout = \"20s\""));
//! ```

use std::net::SocketAddr;

use toml::{Table, Value};

use crate::http::HttpOrigin;

/// An inline table, e.g. for `health = { interval = "100ms" }`.
pub fn table<const N: usize>(entries: [(&str, Value); N]) -> Value {
    Value::Table(
        entries
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
    )
}

/// A whole config.
#[derive(Clone, Debug, Default)]
pub struct Config {
    node: Table,
    admin: Table,
    listeners: Vec<Table>,
    pools: Table,
}

impl Config {
    /// An empty config.
    pub fn new() -> Config {
        Config::default()
    }

    /// Sets a key of `[node]`.
    pub fn node(mut self, key: &str, v: impl Into<Value>) -> Config {
        self.node.insert(key.into(), v.into());
        self
    }

    /// Sets a key of `[admin]`.
    pub fn admin(mut self, key: &str, v: impl Into<Value>) -> Config {
        self.admin.insert(key.into(), v.into());
        self
    }

    /// Adds a listener.
    pub fn listener(mut self, l: Listener) -> Config {
        self.listeners.push(l.0);
        self
    }

    /// Adds a pool.
    pub fn pool(mut self, p: Pool) -> Config {
        self.pools.insert(p.name, Value::Table(p.table));
        self
    }

    /// The TOML text.
    pub fn build(&self) -> String {
        let mut t = Table::new();
        if !self.node.is_empty() {
            t.insert("node".into(), Value::Table(self.node.clone()));
        }
        if !self.admin.is_empty() {
            t.insert("admin".into(), Value::Table(self.admin.clone()));
        }
        t.insert(
            "listeners".into(),
            Value::Array(self.listeners.iter().cloned().map(Value::Table).collect()),
        );
        t.insert("pools".into(), Value::Table(self.pools.clone()));
        toml::to_string(&t).expect("a config prints as TOML")
    }
}

/// A listener.
#[derive(Clone, Debug)]
pub struct Listener(Table);

impl Listener {
    fn on(protocol: &str, port: u16, pool: &str) -> Listener {
        let mut t = Table::new();
        t.insert("protocol".into(), protocol.into());
        t.insert("address".into(), format!("127.0.0.1:{port}").into());
        t.insert("pool".into(), pool.into());
        Listener(t)
    }

    /// TCP on 127.0.0.1:`port` for `pool`.
    pub fn tcp(port: u16, pool: &str) -> Listener {
        Listener::on("tcp", port, pool)
    }

    /// UDP on 127.0.0.1:`port` for `pool`.
    pub fn udp(port: u16, pool: &str) -> Listener {
        Listener::on("udp", port, pool)
    }

    /// HTTP on 127.0.0.1:`port` for `pool`.
    pub fn http(port: u16, pool: &str) -> Listener {
        Listener::on("http", port, pool)
    }

    /// Sets any key (`name`, `address`, `body_timeout`, `mode`...).
    pub fn set(mut self, key: &str, v: impl Into<Value>) -> Listener {
        self.0.insert(key.into(), v.into());
        self
    }

    /// Adds a route.
    pub fn route(mut self, r: Route) -> Listener {
        let routes = self
            .0
            .entry("routes")
            .or_insert_with(|| Value::Array(Vec::new()));
        if let Value::Array(a) = routes {
            a.push(Value::Table(r.0));
        }
        self
    }

    /// TLS with one certificate for every name.
    pub fn tls(self, cert: &std::path::Path, key: &std::path::Path) -> Listener {
        let c = table([
            ("cert", cert.display().to_string().into()),
            ("key", key.display().to_string().into()),
        ]);
        self.set("tls", table([("certificates", Value::Array(vec![c]))]))
    }
}

/// An HTTP route.
#[derive(Clone, Debug)]
pub struct Route(Table);

impl Route {
    /// A route named `name`.
    pub fn new(name: &str) -> Route {
        let mut t = Table::new();
        t.insert("name".into(), name.into());
        Route(t)
    }

    /// A route without a name (convoy calls it `route-N` in logs).
    pub fn unnamed() -> Route {
        Route(Table::new())
    }

    /// Sets any key (`path_prefix`, `priority`, `cost`...).
    pub fn set(mut self, key: &str, v: impl Into<Value>) -> Route {
        self.0.insert(key.into(), v.into());
        self
    }
}

/// A pool.
#[derive(Clone, Debug)]
pub struct Pool {
    name: String,
    table: Table,
}

impl Pool {
    /// A pool named `name`, without servers yet.
    pub fn new(name: &str) -> Pool {
        let mut table = Table::new();
        table.insert("servers".into(), Value::Array(Vec::new()));
        Pool {
            name: name.into(),
            table,
        }
    }

    /// Sets any key (`algorithm`, `max_in_flight`, `health`...).
    pub fn set(mut self, key: &str, v: impl Into<Value>) -> Pool {
        self.table.insert(key.into(), v.into());
        self
    }

    /// Sets `health` to an inline table of `entries`, e.g.
    /// `.health([("check", "none".into())])`.
    pub fn health<const N: usize>(self, entries: [(&str, Value); N]) -> Pool {
        self.set("health", table(entries))
    }

    /// Adds a server.
    pub fn server(mut self, s: Server) -> Pool {
        if let Some(Value::Array(a)) = self.table.get_mut("servers") {
            a.push(Value::Table(s.0));
        }
        self
    }

    /// Adds one server per origin, in order, each named as its origin
    /// ([`Server::from_origin`]).
    pub fn origins(self, origins: &[&HttpOrigin]) -> Pool {
        origins
            .iter()
            .fold(self, |p, o| p.server(Server::from_origin(o)))
    }
}

/// A server of a pool.
#[derive(Clone, Debug)]
pub struct Server(Table);

impl Server {
    /// A server named `name` at `addr`.
    pub fn new(name: &str, addr: SocketAddr) -> Server {
        let mut t = Table::new();
        t.insert("name".into(), name.into());
        t.insert("address".into(), addr.to_string().into());
        Server(t)
    }

    /// A server at `addr` without a name (convoy names it by its address).
    pub fn at(addr: SocketAddr) -> Server {
        let mut t = Table::new();
        t.insert("address".into(), addr.to_string().into());
        Server(t)
    }

    /// The server for an HTTP origin: the origin's name and address.
    pub fn from_origin(o: &HttpOrigin) -> Server {
        Server::new(&o.name, o.addr)
    }

    /// Sets any key (`weight`, `zone`, `priority`...).
    pub fn set(mut self, key: &str, v: impl Into<Value>) -> Server {
        self.0.insert(key.into(), v.into());
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_built_config_is_what_convoy_reads() {
        let a: SocketAddr = "127.0.0.1:9001".parse().unwrap();
        let text = Config::new()
            .node("name", "n1")
            .listener(
                Listener::http(8080, "web")
                    .set("body_timeout", "20s")
                    .route(
                        Route::new("media")
                            .set("path_prefix", "/media/")
                            .set("cost", 10),
                    ),
            )
            .listener(Listener::tcp(8081, "web").set("name", "raw"))
            .pool(
                Pool::new("web")
                    .set(
                        "health",
                        table([("interval", "100ms".into()), ("rise", 2.into())]),
                    )
                    .server(Server::new("a", a).set("weight", 3))
                    .server(Server::new("b", "127.0.0.1:9002".parse().unwrap())),
            )
            .build();
        let c = convoy_config::Config::parse("built", &text).expect(&text);
        assert_eq!(c.node.name, "n1");
        assert_eq!(c.listeners.len(), 2);
        assert_eq!(c.listeners[0].routes[0].cost, 10);
        assert_eq!(c.listeners[0].body_timeout.unwrap().get().as_secs(), 20);
        assert_eq!(c.listeners[1].name, "raw");
        let p = &c.pools["web"];
        assert_eq!(
            (p.servers.len(), p.servers[0].weight, p.health.rise),
            (2, 3, 2)
        );
        assert_eq!(p.servers[0].address.0, a);
    }

    #[tokio::test]
    async fn the_shortcuts_set_the_same_keys() {
        let o = HttpOrigin::start("o", std::time::Duration::ZERO).await;
        let b: SocketAddr = "127.0.0.1:9002".parse().unwrap();
        let text = Config::new()
            .listener(
                Listener::http(8080, "web").route(
                    Route::unnamed()
                        .set("path_prefix", "/vip")
                        .set("priority", 0),
                ),
            )
            .pool(
                Pool::new("web")
                    .health([("check", "none".into())])
                    .origins(&[&o])
                    .server(Server::at(b)),
            )
            .build();
        let c = convoy_config::Config::parse("built", &text).expect(&text);
        let r = &c.listeners[0].routes[0];
        assert_eq!(
            (r.name.as_str(), r.path_prefix.as_deref()),
            ("route-0", Some("/vip"))
        );
        assert!(!text.contains("name = \"route"), "{text}");
        let p = &c.pools["web"];
        assert!(text.contains("check = \"none\""), "{text}");
        assert_eq!(p.servers.len(), 2);
        assert_eq!(
            (p.servers[0].name.as_str(), p.servers[0].address.0),
            ("o", o.addr)
        );
        // Unnamed: the text has no name, convoy names it by its address.
        assert_eq!(text.matches("name = ").count(), 1, "{text}");
        assert_eq!(
            (p.servers[1].name.as_str(), p.servers[1].address.0),
            ("127.0.0.1:9002", b)
        );
    }
}
