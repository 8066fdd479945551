//! Config tests: a table of bad files and the exact error each gets.

use super::*;

const GOOD: &str = r#"
[node]
name = "n1"

[[listeners]]
name = "redis"
address = "127.0.0.1:6380"
pool = "redis"
affinity = "client"
affinity_timeout = "10m"

[[listeners]]
protocol = "udp"
address = "[::1]:5353-5355"
pool = "redis"

[pools.redis]
slow_start = "5s"
health = { interval = "1s", rise = 3 }

[[pools.redis.servers]]
address = "127.0.0.1:6379"
weight = 3
zone = "host-a"

[[pools.redis.servers]]
name = "standby"
address = "127.0.0.1:6381"
priority = 5
"#;

#[test]
fn good_config_normalizes() {
    let c = Config::parse("good.toml", GOOD).unwrap();
    assert_eq!(c.listeners[1].name, "[::1]:5353-5355");
    assert_eq!(c.listeners[1].address.sockets().count(), 3);
    let p = &c.pools["redis"];
    assert_eq!(p.servers[0].name, "127.0.0.1:6379");
    assert_eq!(p.servers[0].priority, 1);
    assert_eq!(p.servers[1].priority, 5);
    assert_eq!(p.health.rise, 3);
    assert_eq!(p.health.fall, 2, "unset keys keep defaults");
    // The normalized output parses back to the same config.
    let again = Config::parse("again.toml", &c.to_toml()).unwrap();
    assert_eq!(again, c);
}

fn err_of(text: &str) -> String {
    Config::parse("bad.toml", text).unwrap_err().to_string()
}

const POOL: &str = "\n[pools.p]\n[[pools.p.servers]]\naddress = \"127.0.0.1:9\"\n";

#[test]
fn bad_files_get_exact_errors() {
    let cases: &[(&str, &str)] = &[
        (
            "[[listeners]]\nadress = \"127.0.0.1:1\"\npool = \"p\"\n",
            "bad.toml:2:1: listeners[0].adress: unknown field `adress`",
        ),
        (
            "[[listeners]]\naddress = \"127.0.0.1:99999\"\npool = \"p\"\n",
            "bad.toml:2:11: listeners[0].address: invalid address \"127.0.0.1:99999\": port \"99999\" is not a number in 1-65535",
        ),
        (
            "[[listeners]]\naddress = \"localhost:80\"\npool = \"p\"\n",
            "bad.toml:2:11: listeners[0].address: invalid address \"localhost:80\": not an IP address",
        ),
        (
            "[[listeners]]\naddress = \"127.0.0.1:90-80\"\npool = \"p\"\n",
            "bad.toml:2:11: listeners[0].address: invalid address \"127.0.0.1:90-80\": port range is reversed",
        ),
        (
            "[[listeners]]\naddress = \"127.0.0.1:80\"\npool = \"nope\"\n",
            "bad.toml:3:8: listeners[0].pool: unknown pool \"nope\" (defined pools: none)",
        ),
        (
            "[[listeners]]\naddress = \"127.0.0.1:80\"\npool = \"p\"\n[pools.p]\n",
            "bad.toml:4:8: pools.p: pool has no servers",
        ),
        (
            "[[listeners]]\naddress = \"127.0.0.1:80\"\npool = \"p\"\nmode = \"sometimes\"\n",
            "bad.toml:4:8: listeners[0].mode: unknown variant `sometimes`, expected one of `multiple`, `single`, `disabled`",
        ),
        (
            "[[listeners]]\naddress = \"127.0.0.1:80\"\npool = \"p\"\nconnect_timeout = \"3 seconds\"\n",
            "bad.toml:4:19: listeners[0].connect_timeout: invalid duration \"3 seconds\"",
        ),
        (
            "[[listeners]]\naddress = \"127.0.0.1:80\"\npool = \"p\"\n[pools.p]\n[[pools.p.servers]]\naddress = \"127.0.0.1:1\"\npriority = 2\n[[pools.p.servers]]\naddress = \"127.0.0.1:2\"\npriority = 2\n",
            "bad.toml:10:12: pools.p.servers[1].priority: duplicate priority 2 (also servers[0])",
        ),
        (
            "[[listeners]]\naddress = \"127.0.0.1:80\"\npool = \"p\"\n[pools.p]\n[[pools.p.servers]]\naddress = \"10.0.0.1\"\n",
            "bad.toml:6:11: pools.p.servers[0].address: invalid address \"10.0.0.1\": expected IP:PORT",
        ),
        (
            "[[listeners]]\naddress = \"127.0.0.1:80\"\npool = \"p\"\n[pools.p]\n[[pools.p.servers]]\naddress = \"127.0.0.1:1\"\nweight = 0\n",
            "bad.toml:7:10: pools.p.servers[0].weight: weight 0 is out of range 1-10000",
        ),
        (
            "[[listeners]]\naddress = \"127.0.0.1:80\"\npool = \"p\"\naffinity_timeout = \"1m\"\n",
            "bad.toml:4:20: listeners[0].affinity_timeout: affinity_timeout needs affinity",
        ),
        (
            "[[listeners]]\naddress = \"127.0.0.1:80\"\npool = \"p\"\n[[listeners]]\naddress = \"127.0.0.1:79-81\"\npool = \"p\"\n",
            "bad.toml:5:11: listeners[1].address: 127.0.0.1:80 is also bound by listeners[0]",
        ),
        (
            "[[listeners]]\nprotocol = \"udp\"\naddress = \"127.0.0.1:80\"\npool = \"p\"\nproxy_protocol = \"v2\"\n",
            "bad.toml:5:18: listeners[0].proxy_protocol: the PROXY protocol header is only sent on TCP (L4) listeners",
        ),
        (
            "[[listeners]]\naddress = \"127.0.0.1:80\"\npool = \"p\"\n[pools.p]\nhealth = { rise = 0 }\n[[pools.p.servers]]\naddress = \"127.0.0.1:1\"\n",
            "bad.toml:5:19: pools.p.health.rise: must be at least 1",
        ),
        ("[node]\nname = \"x\"\n", "bad.toml:1:1: listeners: no listeners defined"),
        (
            "[[listeners]]\naddress = \"::1:80\"\npool = \"p\"\n",
            "bad.toml:2:11: listeners[0].address: invalid address \"::1:80\": write an IPv6 address in brackets",
        ),
        (
            "[[listeners]]\naddress = \"127.0.0.1:80\"\npool = \"p\"\n[[listeners]]\naddress = \"0.0.0.0:80\"\npool = \"p\"\n",
            "bad.toml:5:11: listeners[1].address: 0.0.0.0:80 overlaps 127.0.0.1:80 of listeners[0]",
        ),
        (
            "[[listeners]]\naddress = \"127.0.0.1:1\"\n\rpool = \"p\"\n",
            "bad.toml:3:1: (top level): invalid TOML: unexpected character '\\r'",
        ),
        (
            "[[listeners]\naddress = 1\n",
            "bad.toml:1:12: (top level): invalid table header",
        ),
        (
            "[[listeners]]\naddress = \"127.0.0.1:80\"\n",
            "bad.toml:1:1: listeners[0]: missing field `pool`",
        ),
        (
            "[[listeners]]\naddress = \"127.0.0.1:80\"\npool = \"p\"\n[[listeners]]\nname = \"w\"\nprotocol = \"http\"\naddress = \"127.0.0.1:80\"\npool = \"p\"\n",
            "bad.toml:7:11: listeners[1].address: 127.0.0.1:80 is also bound by listeners[0]",
        ),
        (
            "[[listeners]]\nprotocol = \"http\"\naddress = \"127.0.0.1:80\"\npool = \"p\"\nmode = \"single\"\n",
            "bad.toml:5:8: listeners[0].mode: HTTP listeners balance per request",
        ),
        (
            "[[listeners]]\nprotocol = \"http\"\naddress = \"127.0.0.1:80\"\npool = \"p\"\nsame_port = true\n",
            "bad.toml:5:13: listeners[0].same_port: only applies to TCP and UDP listeners",
        ),
        (
            "[[listeners]]\nprotocol = \"udp\"\naddress = \"127.0.0.1:80\"\npool = \"p\"\npark_after = \"1s\"\n",
            "bad.toml:5:14: listeners[0].park_after: only applies to protocol = \"tcp\" and \"http\" listeners",
        ),
        (
            "[[listeners]]\nprotocol = \"http\"\naddress = \"127.0.0.1:80\"\npool = \"p\"\n[[listeners.routes]]\nclient = \"10.0.0.0/33\"\n",
            "bad.toml:6:10: listeners[0].routes[0].client: \"10.0.0.0/33\" is not an address or network",
        ),
        // The cluster table.
        (
            "[[listeners]]\naddress = \"127.0.0.1:80\"\npool = \"p\"\n[cluster]\npriority = 1\naddress = \"127.0.0.1:7946\"\n",
            "bad.toml:4:2: cluster.key_file: the cluster needs a key: set key_file or key_env",
        ),
        (
            "[[listeners]]\naddress = \"127.0.0.1:80\"\npool = \"p\"\n[cluster]\npriority = 0\naddress = \"127.0.0.1:7946\"\nkey_env = \"K\"\n",
            "bad.toml:5:12: cluster.priority: must be at least 1",
        ),
        (
            "[[listeners]]\nname = \"web\"\naddress = \"127.0.0.1:80\"\npool = \"p\"\n[cluster]\npriority = 1\naddress = \"127.0.0.1:7946\"\nkey_env = \"K\"\nload_weight = { web = 50, api = 10 }\n",
            "bad.toml:9:33: cluster.load_weight.api: no listener is named \"api\"",
        ),
        (
            "[[listeners]]\naddress = \"127.0.0.1:80\"\npool = \"p\"\n[cluster]\npriority = 1\naddress = \"127.0.0.1:7946\"\nkey_env = \"K\"\nseeds = [\"127.0.0.1:7946\"]\n",
            "bad.toml:8:1: cluster.seeds[0]: is this node's own address",
        ),
        // Steering.
        (
            "[[listeners]]\naddress = \"0.0.0.0:80\"\npool = \"p\"\n[cluster]\npriority = 1\naddress = \"127.0.0.1:7946\"\nkey_env = \"K\"\nsteering = \"shared\"\ninterface = \"eth0\"\n",
            "bad.toml:4:2: cluster.vips: steering needs the cluster's virtual addresses (vips)",
        ),
        (
            "[[listeners]]\naddress = \"0.0.0.0:80\"\npool = \"p\"\n[cluster]\npriority = 1\naddress = \"127.0.0.1:7946\"\nkey_env = \"K\"\nsteering = \"shared\"\nvips = [\"10.88.0.100\"]\n",
            "bad.toml:4:2: cluster.interface: steering = \"shared\" needs the interface that holds the virtual addresses",
        ),
        (
            "[[listeners]]\naddress = \"0.0.0.0:80\"\npool = \"p\"\n[cluster]\npriority = 1\naddress = \"127.0.0.1:7946\"\nkey_env = \"K\"\nsteering = \"shared\"\nvips = [\"fd00::64\"]\ninterface = \"eth0\"\n",
            "bad.toml:9:8: cluster.vips: steering = \"shared\" supports IPv4 virtual addresses",
        ),
        (
            "[[listeners]]\naddress = \"127.0.0.1:80\"\npool = \"p\"\n[cluster]\npriority = 1\naddress = \"127.0.0.1:7946\"\nkey_env = \"K\"\nsteering = \"shared\"\nvips = [\"10.88.0.100\"]\ninterface = \"eth0\"\n",
            "bad.toml:9:8: cluster.vips: no listener binds a virtual address (or 0.0.0.0)",
        ),
        (
            "[[listeners]]\naddress = \"0.0.0.0:80\"\npool = \"p\"\n[cluster]\npriority = 1\naddress = \"127.0.0.1:7946\"\nkey_env = \"K\"\nsteering = \"shared\"\nvips = [\"10.88.0.100\"]\ninterface = \"a/b\"\n",
            "bad.toml:10:13: cluster.interface: \"a/b\" is not an interface name",
        ),
        (
            "[[listeners]]\naddress = \"0.0.0.0:80\"\npool = \"p\"\n[cluster]\npriority = 1\naddress = \"127.0.0.1:7946\"\nkey_env = \"K\"\nsteering = \"ecmp\"\nvips = [\"10.88.0.100\"]\n",
            "bad.toml:4:2: cluster.bgp: steering = \"ecmp\" needs [cluster.bgp] (local_as, neighbors)",
        ),
        (
            "[[listeners]]\naddress = \"0.0.0.0:80\"\npool = \"p\"\n[cluster]\npriority = 1\naddress = \"127.0.0.1:7946\"\nkey_env = \"K\"\nsteering = \"ecmp\"\nvips = [\"10.88.0.100\"]\n[cluster.bgp]\nlocal_as = 65001\nneighbors = [{ address = \"10.89.1.1\", as = 65000 }]\nhold_time = \"1s\"\n",
            "bad.toml:13:13: cluster.bgp.hold_time: must be at least 3s",
        ),
        (
            "[[listeners]]\naddress = \"0.0.0.0:80\"\npool = \"p\"\n[cluster]\npriority = 1\naddress = \"127.0.0.1:7946\"\nkey_env = \"K\"\nsteering = \"ecmp\"\nvips = [\"10.88.0.100\"]\n[cluster.bgp]\nlocal_as = 0\nneighbors = []\n",
            "bad.toml:11:12: cluster.bgp.local_as: must be an AS number",
        ),
        (
            "[[listeners]]\naddress = \"0.0.0.0:80\"\npool = \"p\"\n[cluster]\npriority = 1\naddress = \"127.0.0.1:7946\"\nkey_env = \"K\"\nvips = [\"10.88.0.100\"]\n[cluster.bgp]\nlocal_as = 1\nneighbors = [{ address = \"10.89.1.1\", as = 65000 }]\n",
            "bad.toml:9:10: cluster.bgp: used only with steering = \"ecmp\"",
        ),
        (
            "[[listeners]]\naddress = \"0.0.0.0:80\"\npool = \"p\"\n[cluster]\npriority = 1\naddress = \"127.0.0.1:7946\"\nkey_env = \"K\"\nsteering = \"anycast\"\n",
            "bad.toml:8:12: cluster.steering: unknown variant `anycast`, expected one of `none`, `shared`, `ecmp`",
        ),
        // Strings of the schema that compile into the runtime model: a
        // header name, a hash key, an eviction policy, a TLS version.
        (
            "[[listeners]]\nprotocol = \"http\"\naddress = \"127.0.0.1:80\"\npool = \"p\"\n[[listeners.routes]]\nheader = \"X Tier: gold\"\n",
            "bad.toml:6:10: listeners[0].routes[0].header: \"X Tier: gold\" must be \"Name\" or \"Name: value\" with a valid header name",
        ),
        (
            "[[listeners]]\nprotocol = \"http\"\naddress = \"127.0.0.1:80\"\npool = \"p\"\n[pools.p]\nalgorithm = \"hash\"\nhash_on = \"header:a(b\"\n[[pools.p.servers]]\naddress = \"127.0.0.1:1\"\n",
            "bad.toml:7:11: pools.p.hash_on: \"header:a(b\" is not \"client\", \"header:NAME\" or \"cookie:NAME\"",
        ),
        (
            "[[listeners]]\nprotocol = \"http\"\naddress = \"127.0.0.1:80\"\npool = \"p\"\ncache = { eviction = \"random\" }\n",
            "bad.toml:5:22: listeners[0].cache.eviction: unknown variant `random`, expected one of `lru`, `lfu`, `fifo`",
        ),
        (
            "[[listeners]]\nprotocol = \"http\"\naddress = \"127.0.0.1:80\"\npool = \"p\"\n[listeners.tls]\ncertificates = []\nmin_version = \"1.1\"\n",
            "bad.toml:7:15: listeners[0].tls.min_version: unknown variant `1.1`, expected `1.2` or `1.3`",
        ),
        (
            "[[listeners]]\nprotocol = \"http\"\naddress = \"127.0.0.1:80\"\npool = \"p\"\n[[listeners.routes]]\nhost = \"a b\"\n",
            "bad.toml:6:8: listeners[0].routes[0].host: \"a b\" is not a host name",
        ),
        (
            "[[listeners]]\nprotocol = \"http\"\naddress = \"127.0.0.1:80\"\npool = \"p\"\n[[listeners.routes]]\nheader = \"X Y: 1\"\n",
            "bad.toml:6:10: listeners[0].routes[0].header: \"X Y: 1\" must be",
        ),
    ];
    let mut wrong = Vec::new();
    for (text, want) in cases {
        // Pools are appended where the case does not define its own.
        let text = if text.contains("[pools.p]") || !text.contains("pool = \"p\"") {
            text.to_string()
        } else {
            format!("{text}{POOL}")
        };
        let got = err_of(&text);
        // Every error of the file is reported: the one wanted is a line.
        if !got.lines().any(|l| l.starts_with(want)) {
            wrong.push(format!(
                "for config:\n{text}\nwant prefix: {want}\ngot:         {got}"
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n\n"));
}

#[test]
fn unreadable_file() {
    let e = Config::load(std::path::Path::new("/nonexistent/convoy.toml")).unwrap_err();
    assert!(e.to_string().contains("cannot read file"), "{e}");
}

mod prop {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Arbitrary text never panics the loader.
        #[test]
        fn never_panics(s in "\\PC{0,300}") {
            let _ = Config::parse("fuzz.toml", &s);
        }

        /// Mutating a good config never panics and errors carry a location.
        #[test]
        fn mutations_error_cleanly(pos in 0usize..400, ch in proptest::char::any()) {
            let mut t: Vec<char> = GOOD.chars().collect();
            let p = pos % t.len();
            t[p] = ch;
            let t: String = t.into_iter().collect();
            if let Err(e) = Config::parse("m.toml", &t) {
                for one in &e.0 {
                    prop_assert!(one.line >= 1);
                    prop_assert!(!one.reason.is_empty());
                }
            }
        }
    }
}

#[test]
fn every_error_of_a_file_is_reported_in_one_run() {
    let lines = |text: &str| -> Vec<String> {
        Config::parse("bad.toml", text)
            .unwrap_err()
            .0
            .iter()
            .map(|e| format!("{}:{} {}", e.line, e.key, e.reason))
            .collect()
    };
    // Types and unknown keys: five mistakes, five errors.
    let types = "[node]\ndrain_timeout = \"soon\"\n\n[[listeners]]\nadress = \"127.0.0.1:80\"\naddress = \"127.0.0.1:80\"\npool = \"p\"\nmax_connections = \"many\"\n\n[pools.p]\nalgorithm = \"fastest\"\n\n[[pools.p.servers]]\naddress = \"127.0.0.1:9\"\nweight = \"heavy\"\n";
    let got = lines(types);
    assert_eq!(got.len(), 5, "{got:#?}");
    for want in [
        "2:node.drain_timeout invalid duration",
        "5:listeners[0].adress unknown field",
        "8:listeners[0].max_connections invalid type",
        "11:pools.p.algorithm unknown variant",
        "15:pools.p.servers[0].weight invalid type",
    ] {
        assert!(got.iter().any(|g| g.starts_with(want)), "{want}: {got:#?}");
    }
    // Meaning: four mistakes, four errors.
    let meaning = "[[listeners]]\naddress = \"127.0.0.1:80\"\npool = \"nope\"\n\n[[listeners]]\nname = \"b\"\naddress = \"127.0.0.1:80\"\npool = \"p\"\nmode = \"single\"\nprotocol = \"http\"\n\n[pools.p]\nhealth = { interval = \"0s\" }\n\n[[pools.p.servers]]\naddress = \"127.0.0.1:9\"\n";
    let got = lines(meaning);
    assert_eq!(got.len(), 4, "{got:#?}");
    // A type error and errors of meaning elsewhere: both kinds.
    let mixed = "[[listeners]]\naddress = \"127.0.0.1:80\"\npool = \"nope\"\nidle_timeout = 5\n";
    let got = lines(mixed);
    assert!(
        got.iter()
            .any(|g| g.starts_with("4:listeners[0].idle_timeout")),
        "{got:#?}"
    );
    assert!(
        got.iter()
            .any(|g| g.starts_with("3:listeners[0].pool unknown pool")),
        "{got:#?}"
    );
    // Syntax: each bad line, not only the first.
    let syntax = "[[listeners]]\naddress = \"127.0.0.1:80\npool = \"p\"\nx = = 3\n[pools.p\n";
    let got = lines(syntax);
    assert_eq!(
        got.iter()
            .map(|g| g.split(':').next().unwrap())
            .collect::<Vec<_>>(),
        ["2", "4", "5"],
        "{got:#?}"
    );
}
