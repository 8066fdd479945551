//! Admin commands on a node running in the test's runtime: their typed
//! answers, what they change, and their refusals.

use convoy_core::control::{Answer, Applied, CmdErrorKind, Command, ListenerAction, ServerAction};
use convoy_core::AdminState;

use super::{config, free_port, node, node_with_file, pool, tcp_listener, TempConfig, NO_ADMIN};
use crate::{Node, NodeState};

fn basic(port: u16) -> String {
    format!(
        "{NO_ADMIN}{}{}",
        tcp_listener("web", port, "p"),
        pool("p", &[("a", 1, ""), ("b", 2, "")])
    )
}

/// An HTTP listener `web` with a route `api`, on pool `p`.
fn with_route(port: u16, servers: &[(&str, u16, &str)]) -> String {
    format!(
        "{NO_ADMIN}[[listeners]]\nname = \"web\"\nprotocol = \"http\"\naddress = \"127.0.0.1:{port}\"\npool = \"p\"\n\
         [[listeners.routes]]\nname = \"api\"\npath_prefix = \"/api/\"\npriority = 3\n{}",
        pool("p", servers)
    )
}

/// Lets the accept loops of stopped listeners see the stop and close
/// their sockets (the node's own references are gone already).
async fn settle() {
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
}

fn server_cmd(server: &str, action: ServerAction) -> Command {
    Command::Server {
        pool: "p".into(),
        server: server.into(),
        action,
    }
}

fn admin_of(n: &Node, server: &str) -> AdminState {
    n.snap().pools["p"].server(server).unwrap().state.admin()
}

fn state_of(a: Answer) -> NodeState {
    match a {
        Answer::State { state } => state,
        other => panic!("not a state answer: {other:?}"),
    }
}

#[tokio::test]
async fn server_drain_disable_enable_and_weight() {
    let (mut n, _inputs) = node(&basic(free_port())).await;
    let state = n.snap().pools["p"].server("a").unwrap().state.clone();
    let mut cut = state.request_kill_signal();
    cut.borrow_and_update();
    let steps = [
        (ServerAction::Drain, AdminState::Draining, false),
        (ServerAction::Disable, AdminState::Disabled, true),
        (ServerAction::Enable, AdminState::Enabled, false),
    ];
    for (action, want, cuts) in steps {
        let a = n.command(server_cmd("a", action.clone())).unwrap();
        let Answer::Server {
            pool,
            server,
            admin,
            weight,
        } = a
        else {
            panic!("{action:?}: {a:?}");
        };
        assert_eq!(
            (pool.as_str(), server.as_str(), admin, weight),
            ("p", "a", Some(want), Some(1))
        );
        assert_eq!(admin_of(&n, "a"), want);
        // Disabling cuts the server's requests; draining lets them end.
        assert_eq!(cut.has_changed().unwrap(), cuts, "{action:?}");
        cut.borrow_and_update();
    }
    assert_eq!(admin_of(&n, "b"), AdminState::Enabled);

    let a = n.command(server_cmd("a", ServerAction::Weight(3))).unwrap();
    assert!(
        matches!(
            a,
            Answer::Server {
                weight: Some(3),
                ..
            }
        ),
        "{a:?}"
    );
    assert_eq!(n.snap().config.pools["p"].servers[0].weight, 3);
    // Live state is the same server's: the weight change rebuilt the
    // snapshot around it.
    assert!(std::sync::Arc::ptr_eq(
        &state,
        &n.snap().pools["p"].server("a").unwrap().state
    ));
    for w in [0, 10_001] {
        let e = n
            .command(server_cmd("a", ServerAction::Weight(w)))
            .unwrap_err();
        assert_eq!(e.kind, CmdErrorKind::Invalid, "{e:?}");
        assert!(e.error.contains("out of range"), "{e:?}");
    }
    assert_eq!(n.snap().config.pools["p"].servers[0].weight, 3);
    let key = ("p".to_string(), "a".to_string());
    assert_eq!(n.overrides().server_weight[&key], 3);
    assert_eq!(n.overrides().server_admin[&key], (true, false));
    // Every change went through apply, like a reload.
    assert_eq!(n.reloads_applied, 4);
}

#[tokio::test]
async fn unknown_names_are_not_found() {
    let port = free_port();
    let (mut n, _inputs) = node(&with_route(port, &[("a", 1, ""), ("b", 2, "")])).await;
    let cases = [
        (
            Command::Server {
                pool: "q".into(),
                server: "a".into(),
                action: ServerAction::Drain,
            },
            "unknown pool \"q\" (pools: p)",
        ),
        (
            server_cmd("zz", ServerAction::Enable),
            "pool \"p\" has no server \"zz\" (servers: a, b)",
        ),
        (
            Command::Listener {
                name: "nope".into(),
                action: ListenerAction::Drain,
            },
            "unknown listener \"nope\" (listeners: web)",
        ),
        (
            Command::Route {
                listener: "nope".into(),
                route: "api".into(),
                priority: Some(1),
                cost: None,
            },
            "unknown listener \"nope\"",
        ),
        (
            Command::Route {
                listener: "web".into(),
                route: "zz".into(),
                priority: None,
                cost: Some(2),
            },
            "listener \"web\" has no route \"zz\" (routes: api)",
        ),
        (Command::Explain { pool: "q".into() }, "unknown pool \"q\""),
        (
            Command::Purge {
                listener: None,
                prefix: String::new(),
            },
            "no listener has a cache",
        ),
    ];
    for (cmd, msg) in cases {
        let e = n.command(cmd.clone()).unwrap_err();
        assert_eq!(e.kind, CmdErrorKind::NotFound, "{cmd:?}");
        assert_eq!(e.error, msg, "{cmd:?}");
    }
    // Nothing was applied or remembered.
    assert_eq!(n.reloads_applied, 0);
    assert_eq!(n.overrides(), &crate::Overrides::default());
}

#[tokio::test]
async fn listener_commands_set_its_state_and_survive_a_reload() {
    let port = free_port();
    let (mut n, _inputs) = node(&basic(port)).await;
    for (action, want) in [
        (ListenerAction::Disable, AdminState::Disabled),
        (ListenerAction::Enable, AdminState::Enabled),
        (ListenerAction::Drain, AdminState::Draining),
    ] {
        let a = n
            .command(Command::Listener {
                name: "web".into(),
                action,
            })
            .unwrap();
        assert!(
            matches!(&a, Answer::Listener { listener, state } if listener == "web" && *state == want),
            "{a:?}"
        );
        let q = n.query();
        assert_eq!(q.listeners[0].admin, want);
        assert_eq!(q.listeners[0].enabled, want == AdminState::Enabled);
    }
    // A reload that changes the listener restarts it (same socket, new
    // runtime): the operator's state is given back.
    let before = n.bound_addresses();
    let changed = basic(port).replace("pool = \"p\"\n", "pool = \"p\"\nmax_connections = 5\n");
    let a = n.apply(config(&changed), "test").unwrap();
    assert_eq!(
        a_applied(a),
        Applied::Serving {
            listeners: 1,
            pools: 1
        }
    );
    assert_eq!(n.bound_addresses(), before);
    assert_eq!(n.query().listeners[0].admin, AdminState::Draining);
    assert_eq!(
        n.retired.len(),
        1,
        "the old runtime waits for its connections"
    );
}

fn a_applied(a: Answer) -> Applied {
    match a {
        Answer::Applied(x) => x,
        other => panic!("not applied: {other:?}"),
    }
}

#[tokio::test]
async fn route_class_change_goes_through_apply() {
    let port = free_port();
    let (mut n, _inputs) = node(&with_route(port, &[("a", 1, "")])).await;
    let before = n.bound_addresses();
    let route = |priority, cost| Command::Route {
        listener: "web".into(),
        route: "api".into(),
        priority,
        cost,
    };
    let a = n.command(route(Some(0), Some(5))).unwrap();
    assert_eq!(
        a_applied(a),
        Applied::Serving {
            listeners: 1,
            pools: 1
        }
    );
    let r = &n.snap().config.listeners[0].routes[0];
    assert_eq!((r.priority, r.cost), (0, 5));
    // The listener runs the new routes on the same socket.
    assert_eq!(n.bound_addresses(), before);
    // Only the cost: the priority set before stays.
    n.command(route(None, Some(2))).unwrap();
    let r = &n.snap().config.listeners[0].routes[0];
    assert_eq!((r.priority, r.cost), (0, 2));
    for (p, c, msg) in [
        (Some(8), None, "priority must be 0-7"),
        (None, Some(0), "cost must be at least 1"),
        (None, None, "give priority and/or cost"),
    ] {
        let e = n.command(route(p, c)).unwrap_err();
        assert_eq!((e.kind, e.error.as_str()), (CmdErrorKind::Invalid, msg));
    }
    let key = ("web".to_string(), "api".to_string());
    assert_eq!(n.overrides().route[&key], (Some(0), Some(2)));
}

#[tokio::test]
async fn start_stop_suspend_resume_and_their_refusals() {
    let port = free_port();
    let (mut n, _inputs) = node(&basic(port)).await;
    // No probes: nothing to wait for.
    assert_eq!(n.state(), NodeState::Converged);
    let start = |n: &mut Node| n.command(Command::Start);
    assert_eq!(state_of(start(&mut n).unwrap()), NodeState::Converged);

    assert_eq!(
        state_of(n.command(Command::Stop).unwrap()),
        NodeState::Stopped
    );
    assert_eq!(n.bound_addresses(), [("web".to_string(), vec![])]);
    settle().await;
    assert!(
        std::net::TcpListener::bind(("127.0.0.1", port)).is_ok(),
        "the socket is closed"
    );
    assert_eq!(
        state_of(n.command(Command::Stop).unwrap()),
        NodeState::Stopped
    );
    // Changes while stopped are stored for the next start.
    let a = n.command(server_cmd("a", ServerAction::Weight(4))).unwrap();
    assert!(matches!(
        a,
        Answer::Server {
            weight: Some(4),
            ..
        }
    ));
    let in_force = n.overrides().apply(&n.base);
    let applied = n.apply(in_force, "test").unwrap();
    assert_eq!(a_applied(applied), Applied::Stored);
    assert_eq!(state_of(start(&mut n).unwrap()), NodeState::Converged);
    let bound = n.bound_addresses();
    assert_eq!(bound[0].1.len(), 1);

    assert_eq!(
        state_of(n.command(Command::Suspend).unwrap()),
        NodeState::Suspended
    );
    assert!(n.bound_addresses()[0].1.is_empty());
    settle().await;
    for cmd in [
        Command::Start,
        Command::Stop,
        Command::Reload,
        server_cmd("a", ServerAction::Drain),
        Command::Listener {
            name: "web".into(),
            action: ListenerAction::Enable,
        },
    ] {
        let e = n.command(cmd.clone()).unwrap_err();
        assert_eq!(e.kind, CmdErrorKind::Conflict, "{cmd:?}");
        assert!(e.error.contains("suspended"), "{e:?}");
    }
    // Read-only commands still answer.
    let Answer::Query(q) = n.command(Command::Query).unwrap() else {
        panic!("query")
    };
    assert_eq!(q.state, "suspended");
    assert!(matches!(
        n.command(Command::Events { since: 0 }),
        Ok(Answer::Events { .. })
    ));
    assert_eq!(
        state_of(n.command(Command::Resume).unwrap()),
        NodeState::Stopped
    );
    let e = n.command(Command::Resume).unwrap_err();
    assert_eq!(
        (e.kind, e.error.as_str()),
        (CmdErrorKind::Conflict, "the node is not suspended")
    );
    assert_eq!(state_of(start(&mut n).unwrap()), NodeState::Converged);
    assert_eq!(n.snap().config.pools["p"].servers[0].weight, 4);
}

#[tokio::test]
async fn drainstop_by_the_api_stops_the_node_when_idle() {
    let (mut n, _inputs) = node(&basic(free_port())).await;
    assert_eq!(
        state_of(n.command(Command::DrainStop).unwrap()),
        NodeState::Draining
    );
    let e = n.command(Command::Start).unwrap_err();
    assert_eq!(e.kind, CmdErrorKind::Conflict);
    assert!(e.error.contains("drain-stopping"), "{e:?}");
    let e = n.command(Command::Reload).unwrap_err();
    assert_eq!(
        (e.kind, e.error.as_str()),
        (CmdErrorKind::Conflict, "the node is drain-stopping")
    );
    assert_eq!(n.reloads_refused, 1);
    // Nothing is open: the next poll stops the node, which stays up.
    assert_eq!(n.drain_step(), crate::Next::Continue);
    assert_eq!(n.state(), NodeState::Stopped);
    settle().await;
    assert!(n.drain.is_none());
    assert_eq!(
        state_of(n.command(Command::DrainStop).unwrap()),
        NodeState::Stopped
    );
    assert_eq!(
        state_of(n.command(Command::Start).unwrap()),
        NodeState::Converged
    );
}

#[tokio::test]
async fn reload_reads_the_file_and_keeps_the_operators_changes() {
    let port = free_port();
    let file = TempConfig::new(&basic(port));
    let (mut n, _inputs) = node_with_file(&file).await;
    n.command(server_cmd("a", ServerAction::Weight(3))).unwrap();
    n.command(server_cmd("b", ServerAction::Drain)).unwrap();

    // The file adds c and gives b weight 2.
    file.write(&format!(
        "{NO_ADMIN}{}{}",
        tcp_listener("web", port, "p"),
        pool("p", &[("a", 1, ""), ("b", 2, "weight = 2"), ("c", 3, "")])
    ));
    let a = n.command(Command::Reload).unwrap();
    assert_eq!(
        a_applied(a),
        Applied::Serving {
            listeners: 1,
            pools: 1
        }
    );
    let snap = n.snap();
    let p = &snap.pools["p"];
    assert_eq!(p.server("a").unwrap().cfg.weight, 3);
    assert_eq!(p.server("b").unwrap().cfg.weight, 2);
    assert_eq!(p.server("b").unwrap().state.admin(), AdminState::Draining);
    assert!(p.server("c").is_some());

    // An invalid file is refused and changes nothing.
    file.write("[[listeners]]\naddress = nonsense\n");
    let e = n.command(Command::Reload).unwrap_err();
    assert_eq!(e.kind, CmdErrorKind::Invalid);
    assert!(e.error.contains("invalid string"), "{e:?}");
    assert_eq!(n.reloads_refused, 1);
    assert!(n.snap().pools["p"].server("c").is_some());

    // A listener that cannot bind refuses the whole reload, server
    // changes included.
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = held.local_addr().unwrap().port();
    file.write(&format!(
        "{NO_ADMIN}{}{}{}",
        tcp_listener("web", port, "p"),
        tcp_listener("other", busy, "p"),
        pool("p", &[("a", 1, "")])
    ));
    let e = n.command(Command::Reload).unwrap_err();
    assert_eq!(e.kind, CmdErrorKind::Failed);
    assert!(
        e.error.starts_with("listener other: ")
            && e.error.contains(&format!("cannot bind 127.0.0.1:{busy}")),
        "{e:?}"
    );
    assert_eq!(n.reloads_refused, 2);
    assert_eq!(n.snap().pools["p"].servers.len(), 3);
    assert_eq!(n.bound_addresses().len(), 1);
    // The base the overrides apply to is still the last applied file.
    assert_eq!(n.base.pools["p"].servers.len(), 3);
    let a = n.command(server_cmd("c", ServerAction::Weight(7))).unwrap();
    assert!(
        matches!(
            a,
            Answer::Server {
                weight: Some(7),
                ..
            }
        ),
        "{a:?}"
    );
}

#[tokio::test]
async fn a_removed_server_has_its_connections_closed() {
    let port = free_port();
    let (mut n, _inputs) = node(&basic(port)).await;
    let b = n.snap().pools["p"].server("b").unwrap().state.clone();
    let mut closed = b.kill_signal();
    closed.borrow_and_update();
    let mut cut = b.request_kill_signal();
    cut.borrow_and_update();
    let fewer = format!(
        "{NO_ADMIN}{}{}",
        tcp_listener("web", port, "p"),
        pool("p", &[("a", 1, "")])
    );
    n.apply(config(&fewer), "test").unwrap();
    assert!(closed.has_changed().unwrap(), "its connections close");
    assert!(!cut.has_changed().unwrap(), "its HTTP requests finish");
    assert!(n.snap().pools["p"].server("b").is_none());
}

#[tokio::test]
async fn read_only_answers_and_purge() {
    let port = free_port();
    let text = format!(
        "{NO_ADMIN}[[listeners]]\nname = \"web\"\nprotocol = \"http\"\naddress = \"127.0.0.1:{port}\"\npool = \"p\"\n\
         cache = {{ max_bytes = 1048576 }}\n{}",
        pool("p", &[("a", 1, "")])
    );
    let (mut n, _inputs) = node(&text).await;
    let Answer::Query(q) = n.command(Command::Query).unwrap() else {
        panic!("query")
    };
    assert_eq!(
        (q.state.as_str(), q.pools[0].name.as_str()),
        ("converged", "p")
    );
    let Answer::Metrics(text) = n.command(Command::Metrics).unwrap() else {
        panic!("metrics")
    };
    assert!(text.contains("convoy_"), "{text}");
    let Answer::Explain(v) = n.command(Command::Explain { pool: "p".into() }).unwrap() else {
        panic!("explain")
    };
    assert_eq!(v["pool"], "p");
    let a = n
        .command(Command::Purge {
            listener: Some("web".into()),
            prefix: "example.com/".into(),
        })
        .unwrap();
    assert!(matches!(a, Answer::Purged { purged: 0 }), "{a:?}");
    let e = n
        .command(Command::Purge {
            listener: Some("other".into()),
            prefix: String::new(),
        })
        .unwrap_err();
    assert_eq!(
        (e.kind, e.error.as_str()),
        (CmdErrorKind::NotFound, "listener \"other\" has no cache")
    );
}
