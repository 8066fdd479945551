//! The reload diff, pure: old config + new config → the list of changes.

use convoy_core::AdminState;

use super::{config, pool, pool_with, tcp_listener, NO_ADMIN};
use crate::{diff, Change, Overrides};

fn server(pool: &str, server: &str) -> (String, String) {
    (pool.to_string(), server.to_string())
}

fn two_listeners(web_extra: &str, pool_text: &str) -> convoy_config::Config {
    config(&format!(
        "{NO_ADMIN}{}{web_extra}\n{}{pool_text}",
        tcp_listener("web", 8080, "p"),
        tcp_listener("db", 5432, "p"),
    ))
}

#[test]
fn the_same_config_has_no_change() {
    let text = two_listeners("", &pool("p", &[("a", 1, ""), ("b", 2, "")]));
    assert_eq!(diff(&text, &text.clone()), []);
}

#[test]
fn servers_added_removed_reweighted_and_drained() {
    let old = two_listeners("", &pool("p", &[("a", 1, ""), ("b", 2, ""), ("c", 3, "")]));
    let new = two_listeners(
        "",
        &pool(
            "p",
            &[
                ("a", 1, "weight = 3"),
                ("b", 2, "drain = true"),
                ("d", 4, "zone = \"z2\""),
            ],
        ),
    );
    let (p, s) = server("p", "c");
    let mut want = vec![Change::ServerRemoved { pool: p, server: s }];
    let (p, s) = server("p", "a");
    want.push(Change::ServerWeight {
        pool: p,
        server: s,
        from: 1,
        to: 3,
    });
    let (p, s) = server("p", "b");
    want.push(Change::ServerAdmin {
        pool: p,
        server: s,
        from: AdminState::Enabled,
        to: AdminState::Draining,
    });
    let (p, s) = server("p", "d");
    want.push(Change::ServerAdded {
        pool: p,
        server: s,
        pool_existed: true,
    });
    assert_eq!(diff(&old, &new), want);
}

#[test]
fn disabled_enabled_and_other_server_settings() {
    let old = two_listeners("", &pool("p", &[("a", 1, "enabled = false"), ("b", 2, "")]));
    let new = two_listeners("", &pool("p", &[("a", 1, ""), ("b", 7, "enabled = false")]));
    let (p, s) = server("p", "a");
    let mut want = vec![Change::ServerAdmin {
        pool: p,
        server: s,
        from: AdminState::Disabled,
        to: AdminState::Enabled,
    }];
    let (p, s) = server("p", "b");
    want.push(Change::ServerAdmin {
        pool: p.clone(),
        server: s.clone(),
        from: AdminState::Enabled,
        to: AdminState::Disabled,
    });
    // Its address changed too.
    want.push(Change::ServerChanged { pool: p, server: s });
    assert_eq!(diff(&old, &new), want);
}

#[test]
fn a_renamed_server_is_removed_and_added() {
    let old = two_listeners("", &pool("p", &[("a", 1, "")]));
    let new = two_listeners("", &pool("p", &[("a2", 1, "")]));
    let (p, s) = server("p", "a");
    let (p2, s2) = server("p", "a2");
    assert_eq!(
        diff(&old, &new),
        [
            Change::ServerRemoved { pool: p, server: s },
            Change::ServerAdded {
                pool: p2,
                server: s2,
                pool_existed: true,
            },
        ]
    );
}

#[test]
fn listeners_added_removed_and_changed() {
    let old = config(&format!(
        "{NO_ADMIN}{}{}{}",
        tcp_listener("web", 8080, "p"),
        tcp_listener("db", 5432, "p"),
        pool("p", &[("a", 1, "")]),
    ));
    let new = config(&format!(
        "{NO_ADMIN}{}max_connections = 10\n{}{}",
        tcp_listener("web", 8080, "p"),
        tcp_listener("dns", 53, "p"),
        pool("p", &[("a", 1, "")]),
    ));
    assert_eq!(
        diff(&old, &new),
        [
            Change::ListenerChanged("web".into()),
            Change::ListenerAdded("dns".into()),
            Change::ListenerRemoved("db".into()),
        ]
    );
    // A listener that moves to another address is changed, not new: it
    // keeps its name, so its counters carry over.
    let moved = config(&format!(
        "{NO_ADMIN}{}{}{}",
        tcp_listener("web", 8081, "p"),
        tcp_listener("db", 5432, "p"),
        pool("p", &[("a", 1, "")]),
    ));
    assert_eq!(diff(&old, &moved), [Change::ListenerChanged("web".into())]);
}

#[test]
fn pools_added_removed_and_changed() {
    let old = config(&format!(
        "{NO_ADMIN}{}{}{}",
        tcp_listener("web", 8080, "p"),
        pool("p", &[("a", 1, "")]),
        pool("old", &[("x", 9, "")]),
    ));
    let new = config(&format!(
        "{NO_ADMIN}{}{}{}",
        tcp_listener("web", 8080, "p"),
        pool("new", &[("y", 8, "")]),
        pool_with("p", "algorithm = \"qos\"", &[("a", 1, "")]),
    ));
    let (p, s) = server("new", "y");
    let (p2, s2) = server("old", "x");
    assert_eq!(
        diff(&old, &new),
        [
            Change::PoolAdded("new".into()),
            // The servers of a new pool are added without slow start.
            Change::ServerAdded {
                pool: p,
                server: s,
                pool_existed: false,
            },
            Change::PoolRemoved("old".into()),
            Change::ServerRemoved {
                pool: p2,
                server: s2,
            },
            // A pool setting changed; its servers did not.
            Change::PoolChanged("p".into()),
        ]
    );
}

/// Operator changes are applied on top of every file, so a reload of a
/// file that does not mention them does not undo them: the diff shows
/// only what the file changed.
#[test]
fn overrides_survive_a_reload() {
    let listener = format!(
        "{}[[listeners.routes]]\nname = \"api\"\npath_prefix = \"/api/\"\npriority = 3\n",
        tcp_listener("web", 8080, "p")
            .replace("[[listeners]]\n", "[[listeners]]\nprotocol = \"http\"\n")
    );
    let file = config(&format!(
        "{NO_ADMIN}{listener}{}",
        pool("p", &[("a", 1, ""), ("b", 2, "")])
    ));
    let mut ov = Overrides::default();
    ov.server_weight.insert(server("p", "a"), 5);
    ov.server_admin.insert(server("p", "b"), (true, true));
    ov.route
        .insert(("web".into(), "api".into()), (Some(0), Some(4)));
    let in_force = ov.apply(&file);
    let a = &in_force.pools["p"].servers[0];
    assert_eq!((a.weight, a.enabled, a.drain), (5, true, false));
    let b = &in_force.pools["p"].servers[1];
    assert_eq!((b.weight, b.enabled, b.drain), (1, true, true));
    let r = &in_force.listeners[0].routes[0];
    assert_eq!((r.priority, r.cost), (0, 4));

    // The file changes: c is added, b's weight changes.
    let reloaded = config(&format!(
        "{NO_ADMIN}{listener}{}",
        pool("p", &[("a", 1, ""), ("b", 2, "weight = 2"), ("c", 3, "")])
    ));
    let next = ov.apply(&reloaded);
    let (p, s) = server("p", "b");
    let (p2, s2) = server("p", "c");
    assert_eq!(
        diff(&in_force, &next),
        [
            Change::ServerWeight {
                pool: p,
                server: s,
                from: 1,
                to: 2,
            },
            Change::ServerAdded {
                pool: p2,
                server: s2,
                pool_existed: true,
            },
        ]
    );
    assert_eq!(next.pools["p"].servers[0].weight, 5);
    assert!(next.pools["p"].servers[1].drain);
    assert_eq!(next.listeners[0].routes[0].priority, 0);
}

/// What a binary upgrade hands over reads back the same; unknown rows
/// are skipped.
#[test]
fn overrides_round_trip_through_the_handover() {
    let mut ov = Overrides::default();
    ov.server_weight.insert(server("p", "a"), 5);
    ov.server_admin.insert(server("p", "b"), (false, false));
    ov.route
        .insert(("web".into(), "api".into()), (None, Some(4)));
    ov.listener_admin.insert("web".into(), AdminState::Draining);
    let mut json = ov.to_json();
    assert_eq!(Overrides::from_json(&json), ov);
    json["listener_admin"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!(["db", "sideways"]));
    json["server_weight"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!(["p"]));
    assert_eq!(Overrides::from_json(&json), ov);
    assert_eq!(
        Overrides::from_json(&serde_json::Value::Null),
        Overrides::default()
    );
}
