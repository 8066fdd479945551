//! The admin HTTP API (axum). Handlers only translate between HTTP and
//! [`Command`]s; the node's control loop does the work and answers.
//!
//! | Method | Path | Command |
//! |---|---|---|
//! | GET | `/` | the dashboard page |
//! | GET | `/api/v1/query` | query |
//! | POST | `/api/v1/node/{start,stop,drainstop,suspend,resume,reload}` | node commands |
//! | POST | `/api/v1/listeners/{name}/{enable,disable,drain}` | listener commands |
//! | POST | `/api/v1/pools/{pool}/servers/{server}/{enable,disable,drain}` | server commands |
//! | PUT | `/api/v1/pools/{pool}/servers/{server}/weight` `{"weight":N}` | set weight |
//! | PUT | `/api/v1/listeners/{listener}/routes/{route}` `{"priority":N,"cost":N}` | route class |
//! | GET | `/api/v1/pools/{pool}/explain` | explain |
//! | GET | `/api/v1/events?since=N` | recent events |
//! | POST | `/api/v1/cache/purge` `{"prefix":"host/path","listener":opt}` | purge cached responses |
//! | GET | `/metrics` | Prometheus text |

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use convoy_core::control::{
    Answer, ClusterCmd, CmdError, CmdErrorKind, Command, ListenerAction, Reply, Request,
    ServerAction,
};
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};

/// The dashboard, embedded.
pub const DASHBOARD: &str = include_str!("../assets/dashboard.html");

#[derive(Clone)]
struct AppState {
    token: Option<Arc<str>>,
    tx: mpsc::Sender<Request>,
}

pub use convoy_core::control::constant_time_eq;

/// The authority (host and port) of an `Origin` or `Host` value.
fn authority(v: &str) -> &str {
    let v = v.split_once("://").map_or(v, |(_, rest)| rest);
    v.split('/').next().unwrap_or(v)
}

/// Whether a host name (with or without a port) is an IP literal or
/// `localhost`: a DNS name chosen by a web page could point anywhere,
/// including at this loopback address (DNS rebinding).
fn literal_host(authority: &str) -> bool {
    let host = if let Some(rest) = authority.strip_prefix('[') {
        return rest
            .split_once(']')
            .is_some_and(|(h, _)| h.parse::<std::net::Ipv6Addr>().is_ok());
    } else {
        authority.rsplit_once(':').map_or(authority, |(h, _)| h)
    };
    host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::Ipv4Addr>().is_ok()
}

/// Browsers are kept out unless they are on the dashboard's own page: a
/// request that carries an `Origin` must come from the admin address
/// itself, and without a token the Host must be an address, not a name
/// (so that no other web site can drive a tokenless loopback API, by a
/// cross-site form or by DNS rebinding). Clients that are not browsers
/// send no `Origin`.
fn same_origin(st: &AppState, h: &HeaderMap) -> bool {
    let host = h
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(authority);
    if st.token.is_none() && !host.is_none_or(literal_host) {
        return false;
    }
    match h.get(header::ORIGIN) {
        None => true,
        Some(o) => match (o.to_str().ok().map(authority), host) {
            (Some(o), Some(host)) => o.eq_ignore_ascii_case(host),
            _ => false,
        },
    }
}

fn authorized(st: &AppState, h: &HeaderMap) -> bool {
    let Some(token) = &st.token else {
        return true;
    };
    let Some(v) = h.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let Some((scheme, given)) = v.split_once(' ') else {
        return false;
    };
    if !scheme.eq_ignore_ascii_case("bearer") {
        return false;
    }
    constant_time_eq(given.trim().as_bytes(), token.as_bytes())
}

fn json_error(status: StatusCode, kind: &str, msg: &str) -> Response {
    (
        status,
        Json(serde_json::json!({ "error": msg, "kind": kind })),
    )
        .into_response()
}

/// `None` when the request may go on; otherwise the answer that refuses
/// it (403 for a foreign web page, 401 for a missing or wrong token).
fn refused(st: &AppState, h: &HeaderMap) -> Option<Response> {
    if !same_origin(st, h) {
        return Some(json_error(
            StatusCode::FORBIDDEN,
            "forbidden",
            "cross-site request refused: the admin API answers its own dashboard and non-browser clients only",
        ));
    }
    (!authorized(st, h)).then(unauthorized)
}

fn unauthorized() -> Response {
    let mut r = json_error(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "missing or wrong bearer token",
    );
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"convoy\""),
    );
    r
}

fn status_of(kind: CmdErrorKind) -> StatusCode {
    match kind {
        CmdErrorKind::NotFound => StatusCode::NOT_FOUND,
        CmdErrorKind::Conflict => StatusCode::CONFLICT,
        CmdErrorKind::Invalid => StatusCode::BAD_REQUEST,
        CmdErrorKind::Failed => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// Sends a command to the node and waits for its answer.
async fn ask(st: &AppState, cmd: Command) -> Reply {
    let (reply, rx) = oneshot::channel();
    if st.tx.send(Request { cmd, reply }).await.is_err() {
        return Err(CmdError::new(
            CmdErrorKind::Failed,
            "the node is shutting down",
        ));
    }
    rx.await.unwrap_or_else(|_| {
        Err(CmdError::new(
            CmdErrorKind::Failed,
            "the node did not answer",
        ))
    })
}

/// An answer as the API's JSON. It goes through `serde_json::Value`,
/// whose objects sort their keys, so every answer's keys come out in
/// alphabetical order, as they always have (the `query` view too).
fn answer_json(a: &Answer) -> Result<serde_json::Value, serde_json::Error> {
    serde_json::to_value(a)
}

async fn run(st: &AppState, h: &HeaderMap, cmd: Command) -> Response {
    if let Some(r) = refused(st, h) {
        return r;
    }
    match ask(st, cmd).await.map(|a| answer_json(&a)) {
        Ok(Ok(v)) => Json(v).into_response(),
        Ok(Err(e)) => json_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            CmdErrorKind::Failed.as_str(),
            &e.to_string(),
        ),
        Err(e) => json_error(status_of(e.kind), e.kind.as_str(), &e.error),
    }
}

async fn dashboard() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        DASHBOARD,
    )
        .into_response()
}

async fn query(State(st): State<AppState>, h: HeaderMap) -> Response {
    run(&st, &h, Command::Query).await
}

async fn node(State(st): State<AppState>, h: HeaderMap, Path(action): Path<String>) -> Response {
    let cmd = match action.as_str() {
        "start" => Command::Start,
        "stop" => Command::Stop,
        "drainstop" => Command::DrainStop,
        "suspend" => Command::Suspend,
        "resume" => Command::Resume,
        "reload" => Command::Reload,
        "reopen-log" => Command::ReopenLog,
        other => {
            return unknown_action(
                other,
                "start, stop, drainstop, suspend, resume, reload, reopen-log",
            )
        }
    };
    run(&st, &h, cmd).await
}

fn unknown_action(a: &str, known: &str) -> Response {
    json_error(
        StatusCode::NOT_FOUND,
        "not_found",
        &format!("unknown action {a:?} (known: {known})"),
    )
}

/// `?cluster=true`: the command is for every node of the cluster.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Scope {
    #[serde(default)]
    cluster: bool,
}

async fn listener(
    State(st): State<AppState>,
    h: HeaderMap,
    Path((name, action)): Path<(String, String)>,
    Query(scope): Query<Scope>,
) -> Response {
    let action = match action.as_str() {
        "enable" => ListenerAction::Enable,
        "disable" => ListenerAction::Disable,
        "drain" => ListenerAction::Drain,
        other => return unknown_action(other, "enable, disable, drain"),
    };
    let cmd = if scope.cluster {
        Command::ClusterWide(ClusterCmd::Listener { name, action })
    } else {
        Command::Listener { name, action }
    };
    run(&st, &h, cmd).await
}

async fn cluster(State(st): State<AppState>, h: HeaderMap) -> Response {
    run(&st, &h, Command::Cluster).await
}

async fn cluster_node(
    State(st): State<AppState>,
    h: HeaderMap,
    Path((name, action)): Path<(String, String)>,
) -> Response {
    let drainstop = match action.as_str() {
        "drainstop" => true,
        "start" => false,
        other => return unknown_action(other, "drainstop, start"),
    };
    run(
        &st,
        &h,
        Command::ClusterWide(ClusterCmd::Node { name, drainstop }),
    )
    .await
}

/// A server command, for this node or (`?cluster=true`) every node.
fn server_cmd(scope: &Scope, pool: String, server: String, action: ServerAction) -> Command {
    if scope.cluster {
        Command::ClusterWide(ClusterCmd::Server {
            pool,
            server,
            action,
        })
    } else {
        Command::Server {
            pool,
            server,
            action,
        }
    }
}

async fn server(
    State(st): State<AppState>,
    h: HeaderMap,
    Path((pool, server, action)): Path<(String, String, String)>,
    Query(scope): Query<Scope>,
) -> Response {
    let action = match action.as_str() {
        "enable" => ServerAction::Enable,
        "disable" => ServerAction::Disable,
        "drain" => ServerAction::Drain,
        other => return unknown_action(other, "enable, disable, drain"),
    };
    run(&st, &h, server_cmd(&scope, pool, server, action)).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WeightBody {
    weight: u32,
}

async fn weight(
    State(st): State<AppState>,
    h: HeaderMap,
    Path((pool, server)): Path<(String, String)>,
    Query(scope): Query<Scope>,
    body: Result<Json<WeightBody>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Json(b) = match body {
        Ok(b) => b,
        Err(e) => return bad_body(&e.body_text()),
    };
    let cmd = server_cmd(&scope, pool, server, ServerAction::Weight(b.weight));
    run(&st, &h, cmd).await
}

fn bad_body(msg: &str) -> Response {
    json_error(StatusCode::BAD_REQUEST, "invalid", msg)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteBody {
    priority: Option<u8>,
    cost: Option<u32>,
}

async fn route(
    State(st): State<AppState>,
    h: HeaderMap,
    Path((listener, route)): Path<(String, String)>,
    body: Result<Json<RouteBody>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Json(b) = match body {
        Ok(b) => b,
        Err(e) => return bad_body(&e.body_text()),
    };
    run(
        &st,
        &h,
        Command::Route {
            listener,
            route,
            priority: b.priority,
            cost: b.cost,
        },
    )
    .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PurgeBody {
    prefix: String,
    listener: Option<String>,
}

async fn purge(
    State(st): State<AppState>,
    h: HeaderMap,
    body: Result<Json<PurgeBody>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Json(b) = match body {
        Ok(b) => b,
        Err(e) => return bad_body(&e.body_text()),
    };
    run(
        &st,
        &h,
        Command::Purge {
            listener: b.listener,
            prefix: b.prefix,
        },
    )
    .await
}

async fn explain(State(st): State<AppState>, h: HeaderMap, Path(pool): Path<String>) -> Response {
    run(&st, &h, Command::Explain { pool }).await
}

#[derive(Deserialize)]
struct EventsQuery {
    #[serde(default)]
    since: u64,
}

async fn events(
    State(st): State<AppState>,
    h: HeaderMap,
    q: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let since = match q {
        Ok(Query(q)) => q.since,
        Err(e) => return bad_body(&e.body_text()),
    };
    run(&st, &h, Command::Events { since }).await
}

async fn metrics(State(st): State<AppState>, h: HeaderMap) -> Response {
    if let Some(r) = refused(&st, &h) {
        return r;
    }
    match ask(&st, Command::Metrics).await {
        Ok(Answer::Metrics(text)) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Ok(_) => json_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "failed",
            "metrics are not text",
        ),
        Err(e) => json_error(status_of(e.kind), "failed", &e.error),
    }
}

async fn not_found() -> Response {
    json_error(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
}

/// The admin API's routes. `token`: the bearer token every request but the
/// dashboard page must carry (`None`: no authentication, loopback only).
pub fn router(token: Option<String>, tx: mpsc::Sender<Request>) -> Router {
    let st = AppState {
        token: token.map(Arc::from),
        tx,
    };
    Router::new()
        .route("/", get(dashboard))
        .route("/api/v1/query", get(query))
        .route("/api/v1/node/{action}", post(node))
        .route("/api/v1/listeners/{name}/{action}", post(listener))
        .route("/api/v1/listeners/{listener}/routes/{route}", put(route))
        .route("/api/v1/pools/{pool}/servers/{server}/weight", put(weight))
        .route(
            "/api/v1/pools/{pool}/servers/{server}/{action}",
            post(server),
        )
        .route("/api/v1/pools/{pool}/explain", get(explain))
        .route("/api/v1/events", get(events))
        .route("/api/v1/cluster", get(cluster))
        .route("/api/v1/cluster/nodes/{name}/{action}", post(cluster_node))
        .route("/api/v1/cache/purge", post(purge))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .with_state(st)
}

/// Serves the admin API on `listener` until the task is dropped; over
/// TLS with `tls` (`[admin] tls`).
pub async fn serve(
    listener: TcpListener,
    token: Option<String>,
    tx: mpsc::Sender<Request>,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    let app = router(token, tx);
    let Some(tls) = tls else {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(event = "admin_error", error = %e, "admin API stopped");
        }
        return;
    };
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(event = "admin_error", error = %e, "admin API: accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let (tls, app) = (tls.clone(), app.clone());
        tokio::spawn(async move {
            let stream = match tokio::time::timeout(
                std::time::Duration::from_secs(10),
                tls.accept(stream),
            )
            .await
            {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(client = %peer, error = %e, "admin API: TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let svc = hyper_util::service::TowerToHyperService::new(app);
            let _ =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    /// A fake node answering each command with its debug text, or an error
    /// for names starting with "missing".
    fn fake_node() -> mpsc::Sender<Request> {
        let (tx, mut rx) = mpsc::channel::<Request>(8);
        tokio::spawn(async move {
            while let Some(r) = rx.recv().await {
                let ans = match &r.cmd {
                    Command::Server { server, .. } if server.starts_with("missing") => {
                        Err(CmdError::new(CmdErrorKind::NotFound, "unknown server"))
                    }
                    Command::Metrics => Ok(Answer::Metrics("convoy_up 1\n".into())),
                    c => Ok(Answer::Explain(
                        serde_json::json!({ "cmd": format!("{c:?}") }),
                    )),
                };
                let _ = r.reply.send(ans);
            }
        });
        tx
    }

    async fn call(
        app: &Router,
        method: &str,
        uri: &str,
        token: Option<&str>,
        body: &str,
    ) -> (StatusCode, String) {
        let auth = token.map(|t| format!("Bearer {t}"));
        let mut h: Vec<(&str, &str)> = Vec::new();
        if let Some(a) = &auth {
            h.push(("authorization", a));
        }
        if !body.is_empty() {
            h.push(("content-type", "application/json"));
        }
        send(app, method, uri, &h, body).await
    }

    async fn send(
        app: &Router,
        method: &str,
        uri: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> (StatusCode, String) {
        let mut b = axum::http::Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let resp = app
            .clone()
            .oneshot(b.body(Body::from(body.to_string())).unwrap())
            .await
            .unwrap();
        let st = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        (st, String::from_utf8_lossy(&bytes).into_owned())
    }

    #[tokio::test]
    async fn routes_map_to_commands_and_auth_is_checked() {
        let app = router(Some("s3cret".into()), fake_node());
        let t = Some("s3cret");
        let cases: &[(&str, &str, &str, &str)] = &[
            ("GET", "/api/v1/query", "", "Query"),
            ("POST", "/api/v1/node/drainstop", "", "DrainStop"),
            ("POST", "/api/v1/node/suspend", "", "Suspend"),
            (
                "POST",
                "/api/v1/listeners/web/drain",
                "",
                "Listener { name: \\\"web\\\", action: Drain }",
            ),
            (
                "POST",
                "/api/v1/pools/p/servers/a/disable",
                "",
                "action: Disable",
            ),
            (
                "PUT",
                "/api/v1/pools/p/servers/a/weight",
                "{\"weight\":7}",
                "Weight(7)",
            ),
            (
                "PUT",
                "/api/v1/listeners/web/routes/api",
                "{\"priority\":2}",
                "priority: Some(2), cost: None",
            ),
            ("GET", "/api/v1/pools/p/explain", "", "Explain"),
            ("GET", "/api/v1/events?since=5", "", "Events { since: 5 }"),
        ];
        for (m, uri, body, want) in cases {
            let (st, text) = call(&app, m, uri, t, body).await;
            assert_eq!(st, StatusCode::OK, "{m} {uri}: {text}");
            assert!(text.contains(want), "{m} {uri}: {text} lacks {want}");
        }
        // Authentication.
        let (st, _) = call(&app, "GET", "/api/v1/query", None, "").await;
        assert_eq!(st, StatusCode::UNAUTHORIZED);
        let (st, _) = call(&app, "GET", "/api/v1/query", Some("s3creT"), "").await;
        assert_eq!(st, StatusCode::UNAUTHORIZED);
        let (st, _) = call(&app, "GET", "/metrics", None, "").await;
        assert_eq!(st, StatusCode::UNAUTHORIZED);
        let (st, text) = call(&app, "GET", "/metrics", t, "").await;
        assert_eq!((st, text.as_str()), (StatusCode::OK, "convoy_up 1\n"));
        // Scheme names are case-insensitive.
        let (st, _) = call_with(
            &app,
            "GET",
            "/api/v1/query",
            &[("authorization", "BEARER s3cret")],
        )
        .await;
        assert_eq!(st, StatusCode::OK);
        // The page itself needs no token (it asks for one).
        let (st, text) = call(&app, "GET", "/", None, "").await;
        assert_eq!(st, StatusCode::OK);
        assert!(text.contains("<html"));
        // Errors.
        let (st, text) = call(
            &app,
            "POST",
            "/api/v1/pools/p/servers/missing/enable",
            t,
            "",
        )
        .await;
        assert_eq!(st, StatusCode::NOT_FOUND);
        assert!(text.contains("unknown server"), "{text}");
        let (st, text) = call(&app, "POST", "/api/v1/node/explode", t, "").await;
        assert_eq!(st, StatusCode::NOT_FOUND);
        assert!(text.contains("explode"), "{text}");
        let (st, _) = call(
            &app,
            "PUT",
            "/api/v1/pools/p/servers/a/weight",
            t,
            "{\"weight\":\"x\"}",
        )
        .await;
        assert_eq!(st, StatusCode::BAD_REQUEST);
        let (st, _) = call(&app, "GET", "/nope", t, "").await;
        assert_eq!(st, StatusCode::NOT_FOUND);
    }

    async fn call_with(
        app: &Router,
        method: &str,
        uri: &str,
        headers: &[(&str, &str)],
    ) -> (StatusCode, String) {
        send(app, method, uri, headers, "").await
    }

    #[tokio::test]
    async fn foreign_web_pages_cannot_drive_the_api() {
        // Without a token (loopback): a page on another site posting a
        // form, or a rebound DNS name, is refused; the dashboard's own
        // page and non-browser clients are served.
        let app = router(None, fake_node());
        let stop = "/api/v1/node/stop";
        let h = [
            ("host", "127.0.0.1:9900"),
            ("origin", "http://evil.example"),
        ];
        let (st, text) = call_with(&app, "POST", stop, &h).await;
        assert_eq!(st, StatusCode::FORBIDDEN, "{text}");
        let h = [("host", "rebound.example:9900")];
        let (st, _) = call_with(&app, "GET", "/api/v1/query", &h).await;
        assert_eq!(st, StatusCode::FORBIDDEN);
        let (st, _) = call_with(&app, "GET", "/metrics", &h).await;
        assert_eq!(st, StatusCode::FORBIDDEN);
        let h = [
            ("host", "127.0.0.1:9900"),
            ("origin", "http://127.0.0.1:9900"),
        ];
        let (st, text) = call_with(&app, "POST", stop, &h).await;
        assert_eq!(st, StatusCode::OK, "{text}");
        for host in [
            "127.0.0.1:9900",
            "localhost:9900",
            "[::1]:9900",
            "127.0.0.1",
        ] {
            let (st, _) = call_with(&app, "POST", stop, &[("host", host)]).await;
            assert_eq!(st, StatusCode::OK, "{host}");
        }
        // With a token, a name is fine (the token proves the caller), a
        // foreign origin still is not.
        let app = router(Some("t".into()), fake_node());
        let auth = ("authorization", "Bearer t");
        let (st, _) = call_with(
            &app,
            "GET",
            "/api/v1/query",
            &[("host", "lb.example:9900"), auth],
        )
        .await;
        assert_eq!(st, StatusCode::OK);
        let h = [
            ("host", "lb.example:9900"),
            ("origin", "https://other.example"),
            auth,
        ];
        let (st, _) = call_with(&app, "GET", "/api/v1/query", &h).await;
        assert_eq!(st, StatusCode::FORBIDDEN);
    }

    /// Each answer's JSON, byte for byte, as the node wrote it when its
    /// answers were `serde_json::Value`s (keys sorted; `null` for a
    /// missing admin state or weight).
    #[test]
    fn answers_keep_their_json() {
        use convoy_core::control::{Applied, NodeState};
        use convoy_core::AdminState;
        let json = |a: Answer| serde_json::to_string(&answer_json(&a).unwrap()).unwrap();
        let state = Answer::State {
            state: NodeState::Suspended,
        };
        assert_eq!(json(state), r#"{"state":"suspended"}"#);
        let serving = Answer::Applied(Applied::Serving {
            listeners: 2,
            pools: 1,
        });
        assert_eq!(json(serving), r#"{"applied":true,"listeners":2,"pools":1}"#);
        let stored = Answer::Applied(Applied::Stored);
        assert_eq!(json(stored), r#"{"applied":true,"serving":false}"#);
        let listener = Answer::Listener {
            listener: "web".into(),
            state: AdminState::Draining,
        };
        assert_eq!(json(listener), r#"{"listener":"web","state":"draining"}"#);
        let server = |admin, weight| Answer::Server {
            pool: "p".into(),
            server: "a".into(),
            admin,
            weight,
        };
        assert_eq!(
            json(server(Some(AdminState::Enabled), Some(3))),
            r#"{"admin":"enabled","pool":"p","server":"a","weight":3}"#
        );
        assert_eq!(
            json(server(None, None)),
            r#"{"admin":null,"pool":"p","server":"a","weight":null}"#
        );
        assert_eq!(json(Answer::Purged { purged: 4 }), r#"{"purged":4}"#);
        let events = Answer::Events {
            last: 7,
            events: vec![serde_json::json!({ "seq": 7, "event": "x" })],
        };
        assert_eq!(
            json(events),
            r#"{"events":[{"event":"x","seq":7}],"last":7}"#
        );
        let explain = Answer::Explain(serde_json::json!({ "pool": "p", "algorithm": "qos" }));
        assert_eq!(json(explain), r#"{"algorithm":"qos","pool":"p"}"#);
        assert_eq!(json(Answer::Metrics("a 1\n".into())), r#""a 1\n""#);
        // The query view: the struct itself, keys sorted at every level.
        let cfg = convoy_config::Config::parse(
            "t.toml",
            "[admin]\nenabled = false\n[[listeners]]\nname = \"web\"\naddress = \"127.0.0.1:1\"\npool = \"p\"\n\
             [pools.p]\n[[pools.p.servers]]\nname = \"a\"\naddress = \"127.0.0.1:2\"\n",
        )
        .unwrap();
        let snap = convoy_core::Snapshot::build(std::sync::Arc::new(cfg), None);
        let q = json(Answer::Query(convoy_core::query::query(&snap, &[])));
        let old = serde_json::to_value(convoy_core::query::query(&snap, &[])).unwrap();
        assert_eq!(q, serde_json::to_string(&old).unwrap());
        assert!(q.starts_with(r#"{"listeners":[],"node":"#), "{q}");
    }

    #[test]
    fn hosts_and_origins() {
        assert_eq!(authority("http://127.0.0.1:9900"), "127.0.0.1:9900");
        assert_eq!(authority("https://[::1]:9/x"), "[::1]:9");
        assert_eq!(authority("10.0.0.1:80"), "10.0.0.1:80");
        assert!(literal_host("127.0.0.1:9900"));
        assert!(literal_host("[::1]:9900"));
        assert!(literal_host("LOCALHOST"));
        assert!(!literal_host("127.0.0.1.nip.io:9900"));
        assert!(!literal_host("[evil]:1"));
    }

    #[test]
    fn constant_time_compare() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(constant_time_eq(b"", b""));
    }
}
