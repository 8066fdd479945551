//! One request to a server: admission (a slot, or a wait in the pool's
//! queue), the upstream request, its outcome recorded on the server
//! (latency, errors, outlier ejection, passive failures), and retries
//! where safe; then the client's answer from the server's response.

use std::sync::Arc;

use bytes::Bytes;
use convoy_core::admission::{Admit, Grant};
use convoy_core::context::DataEvent;
use convoy_core::pool::ServerEntry;
use convoy_core::state::ErrorKind;
use convoy_core::PoolRuntime;
use http::{HeaderValue, Response, StatusCode};
use http_body::Body;
use http_body_util::BodyExt;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, warn};

use super::access::AccessRec;
use super::answers::*;
use super::bodies::{BoxError, Fault, Guarded, RespBody, Slot, UpResp};
use super::cached::{Tee, Teed};
use super::explain::explanation;
use super::request::{Outgoing, ReqCtx};
use super::upstream::{Outbound, UpErr};
use super::Shared;
use crate::headers::strip_hop_by_hop;

/// Waits for a queued request's slot; on timeout or drop, cancels it (and
/// releases a slot handed over meanwhile).
pub(super) struct Queued<'a> {
    pub(super) pool: &'a Arc<PoolRuntime>,
    pub(super) ticket: convoy_balance::queue::Ticket,
    pub(super) rx: Option<tokio::sync::oneshot::Receiver<Grant>>,
    pub(super) cost: u32,
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        if let Some(mut rx) = self.rx.take() {
            if !self.pool.cancel(self.ticket) {
                if let Ok((pool, i)) = rx.try_recv() {
                    pool.release(i, self.cost);
                }
            }
        }
    }
}

/// A server's answer with what it holds: the slot, and how it was chosen.
pub(super) struct Fetched {
    pub(super) resp: Response<UpResp>,
    pub(super) slot: Slot,
    pub(super) pool: Arc<PoolRuntime>,
    pub(super) idx: usize,
    pub(super) kill: watch::Receiver<u64>,
    pub(super) queued_ms: u64,
    pub(super) tried: Vec<usize>,
}

/// Sends a request (head `parts`, already rewritten) to a server of
/// `first_pool`: admission (a slot or a wait in the queue), the upstream
/// request, its outcome recorded, and retries where safe. Returns the
/// server's response head, or the answer to give the client.
pub(super) async fn fetch(
    sh: &Arc<Shared>,
    first_pool: &Arc<PoolRuntime>,
    parts: &http::request::Parts,
    body: &mut Outgoing,
    rc: &ReqCtx,
    fault: &Fault,
    rec: &mut Option<Box<AccessRec>>,
) -> Result<Fetched, Response<RespBody>> {
    let mut tried: Vec<usize> = Vec::new();
    let mut queued_ms = 0u64;
    loop {
        let (pool, idx) = admit(sh, first_pool, rc, &tried, &mut queued_ms, rec).await?;
        let slot = Slot {
            pool: Arc::clone(&pool),
            idx,
            cost: rc.cost,
        };
        let server = &pool.servers[idx];
        if let Some(r) = rec.as_mut() {
            r.server = Some(server.cfg.name.clone());
            r.tier = Some(server.cfg.tier);
            r.retries = tried.len();
        }
        if tried_before(first_pool, &tried, server) {
            // A queued retry was handed the server it already failed on.
            return Err(local(StatusCode::BAD_GATEWAY, "no server could be reached"));
        }
        let host = host_for(rc, server);
        let out = Outbound {
            parts,
            path: rc.path.as_str(),
            host,
            fwd: &rc.fwd,
        };
        let sending = match sh
            .up
            .send(&pool, server.cfg.address.0, out, body.take(), rc.upgrade)
        {
            Ok(s) => s,
            Err(e) => {
                warn!(event = "upstream_tls_error", pool = %pool.name, error = %e);
                return Err(local(
                    StatusCode::BAD_GATEWAY,
                    "TLS to the server is misconfigured",
                ));
            }
        };
        let kill = server.state.request_kill_signal();
        let started = Instant::now();
        // (Its deadline from `started`: no clock read of its own.)
        let result = tokio::time::timeout_at(started + sh.response_timeout, sending).await;
        // A request that failed by the client's fault (body too large,
        // malformed, aborted or too slow) does not blame the server.
        if !matches!(result, Ok(Ok(_))) {
            if let Some(f) = fault.get() {
                return Err(client_fault(f));
            }
        }
        // One clock read for the latency and the outcome's moment.
        let ended = Instant::now();
        let us = ended.duration_since(started).as_micros();
        match result {
            Err(_) => {
                // The server took too long to answer: its fault.
                record(
                    &pool,
                    idx,
                    (us, ended),
                    Some((ErrorKind::Timeout, "response timeouts")),
                );
                debug!(server = %server.cfg.name, "response timeout");
                return Err(local(
                    StatusCode::GATEWAY_TIMEOUT,
                    "server response timed out",
                ));
            }
            Ok(Ok(resp)) => {
                if let Some(r) = rec.as_mut() {
                    r.server_ms = Some((us / 1000) as u64);
                }
                let failed = resp
                    .status()
                    .is_server_error()
                    .then_some((ErrorKind::Status5xx, "consecutive 5xx"));
                record(&pool, idx, (us, ended), failed);
                server.state.latency.observe(us as u64);
                // The server answered: its passive failure count restarts.
                server.state.record_success();
                return Ok(Fetched {
                    resp,
                    slot,
                    pool: Arc::clone(&pool),
                    idx,
                    kill,
                    queued_ms,
                    tried,
                });
            }
            Ok(Err(e)) => {
                drop(slot);
                if !retry_after(sh, first_pool, &pool, idx, us, &e, parts, rc) {
                    return Err(local(StatusCode::BAD_GATEWAY, "upstream request failed"));
                }
                if let Some(t) = first_pool.index_of(&server.cfg.name) {
                    tried.push(t);
                }
            }
        }
    }
}

/// Whether `server` is one of the servers of `first_pool` the request
/// was already tried on.
fn tried_before(first_pool: &PoolRuntime, tried: &[usize], server: &ServerEntry) -> bool {
    tried.iter().any(|&t| {
        first_pool
            .servers
            .get(t)
            .is_some_and(|e| Arc::ptr_eq(&e.state, &server.state))
    })
}

/// The Host header to add for `server`: HTTP/2 clients send no Host
/// header, HTTP/1.0 clients may not; HTTP/1.1 servers need one: the
/// request's authority, else the server's own address.
fn host_for(rc: &ReqCtx, server: &ServerEntry) -> Option<HeaderValue> {
    if rc.host_field {
        None
    } else {
        rc.host
            .clone()
            .or_else(|| HeaderValue::try_from(server.cfg.address.0.to_string()).ok())
    }
}

/// A slot on a server of `first_pool` (or of a newer pool after a
/// reload, when a queued request is granted one there), at once or after
/// a wait in the queue; the answer to give the client when there is none.
async fn admit(
    sh: &Shared,
    first_pool: &Arc<PoolRuntime>,
    rc: &ReqCtx,
    tried: &[usize],
    queued_ms: &mut u64,
    rec: &mut Option<Box<AccessRec>>,
) -> Result<Grant, Response<RespBody>> {
    let (ticket, rx) = match first_pool.admit(rc.aff, rc.cost, rc.class, tried) {
        Admit::Slot(i) => return Ok((Arc::clone(first_pool), i)),
        Admit::NoServer => {
            sh.listener.count_failed();
            return Err(if tried.is_empty() {
                unavailable("no server available", 1)
            } else {
                local(StatusCode::BAD_GATEWAY, "no server could be reached")
            });
        }
        Admit::Full => return Err(unavailable("queue full", 1)),
        Admit::Queued(ticket, rx) => (ticket, rx),
    };
    let mut q = Queued {
        pool: first_pool,
        ticket,
        rx: Some(rx),
        cost: rc.cost,
    };
    let timeout = first_pool.cfg.queue_timeout.get();
    let waited = Instant::now();
    let r = match q.rx.as_mut() {
        Some(rx) => tokio::time::timeout(timeout, rx).await,
        None => return Err(local(StatusCode::INTERNAL_SERVER_ERROR, "queue state lost")),
    };
    *queued_ms += waited.elapsed().as_millis() as u64;
    if let Some(r) = rec.as_mut() {
        r.queue_ms = *queued_ms;
    }
    match r {
        Ok(Ok(grant)) => {
            q.rx = None;
            Ok(grant)
        }
        _ => {
            first_pool
                .admission()
                .timeouts
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Err(unavailable("queue timeout", timeout.as_secs().max(1)))
        }
    }
}

/// Records one request's outcome on `pool`'s server `idx`: its latency
/// (µs) and when it ended, and for a failure its kind, the outcome that
/// may eject it (with `reason` in the log when it does).
fn record(
    pool: &PoolRuntime,
    idx: usize,
    (us, ended): (u128, Instant),
    failure: Option<(ErrorKind, &'static str)>,
) {
    let server = &pool.servers[idx];
    let now = convoy_core::clock::ms_at(ended);
    server.state.observe_at(us as f64, failure.is_some(), now);
    if let Some((kind, _)) = failure {
        server.state.count_error(kind);
    }
    if let Some(ms) = pool.record_outcome(idx, failure.is_none(), now) {
        let reason = failure.map_or("consecutive errors", |(_, r)| r);
        server.state.set_ejection_reason(reason);
        warn!(event = "server_ejected", pool = %pool.name, server = %server.cfg.name, ejection_ms = ms, reason);
    }
}

/// A request that failed before any response byte: recorded on the
/// server, then whether it may go again (to another server, or the same
/// on a new connection): one that never reached the server (connect
/// error) may, and so may an idempotent one whose connection was reset,
/// when its body can be sent again and the pool's retry budget allows.
#[allow(clippy::too_many_arguments)]
fn retry_after(
    sh: &Shared,
    first_pool: &PoolRuntime,
    pool: &PoolRuntime,
    idx: usize,
    us: u128,
    e: &UpErr,
    parts: &http::request::Parts,
    rc: &ReqCtx,
) -> bool {
    let server = &pool.servers[idx];
    let connect = e.is_connect();
    if connect && e.is_local() {
        // This node is out of descriptors or ports: not the server's
        // fault, and no other server would do better now.
        return false;
    }
    let kind = if connect {
        ErrorKind::Connect
    } else {
        ErrorKind::Reset
    };
    record(
        pool,
        idx,
        (us, Instant::now()),
        Some((kind, "consecutive errors")),
    );
    if connect {
        let _ = sh.ctx.events.send(DataEvent::Failure {
            server: Arc::clone(&server.state),
            reason: format!("connect: {e}"),
        });
    }
    debug!(server = %server.cfg.name, error = %e, connect, "upstream request failed");
    if !(connect || idempotent(&parts.method)) || !rc.replayable {
        return false;
    }
    if first_pool.take_retry() {
        return true;
    }
    if sh.listener.failed_log.allow() {
        warn!(event = "retry_budget_exhausted", pool = %first_pool.name, budget_percent = first_pool.cfg.retry_budget);
    }
    false
}

/// The client's answer from a server's response: hop-by-hop headers
/// removed, the sticky cookie and explanation added, compressed if wanted,
/// the slot held until the body ends; `store` keeps a copy of the body
/// for the cache.
pub(super) fn finish(
    sh: &Shared,
    f: Fetched,
    parts: &http::request::Parts,
    rc: &ReqCtx,
    store: Option<Tee>,
) -> Response<RespBody> {
    let Fetched {
        resp,
        slot,
        pool,
        idx,
        kill,
        queued_ms,
        tried,
    } = f;
    let (mut rparts, rbody) = resp.into_parts();
    if !matches!(rbody, UpResp::H1(_)) {
        // (convoy's HTTP/1 client removed them while parsing.)
        strip_hop_by_hop(&mut rparts.headers);
    }
    // The cache keeps the server's response, not what convoy adds for
    // this client (its sticky cookie, an operator's explanation).
    let stored_parts = store.as_ref().map(|_| rparts.clone());
    if let Some(name) = &pool.cfg.sticky_cookie {
        if rc.aff.prefer != Some(idx) {
            let c = format!("{name}={}; Path=/; HttpOnly", pool.sticky_value(idx));
            if let Ok(v) = HeaderValue::from_str(&c) {
                rparts.headers.append(http::header::SET_COOKIE, v);
            }
        }
    }
    if rc.explain {
        let text = explanation(&pool, idx, rc.class, rc.cost, queued_ms, &tried);
        if let Ok(v) = HeaderValue::from_str(&text) {
            rparts.headers.insert(crate::headers::EXPLAIN, v);
        }
    }
    if rc.note_server {
        rparts
            .extensions
            .insert(super::rewrite::ServedBy(Arc::clone(
                &pool.servers[idx].state.name,
            )));
    }
    let guarded = Guarded {
        inner: rbody,
        slot,
        kill,
        pause: sh.response_timeout,
        timer: None,
    };
    match store {
        Some(mut tee) => {
            tee.parts = stored_parts;
            let teed = Teed {
                inner: guarded,
                tee: Some(tee),
            };
            compressed(sh, parts, rparts, teed)
        }
        None => compressed(sh, parts, rparts, guarded),
    }
}

/// Compresses the body when the client and the response allow it.
pub(super) fn compressed<B>(
    sh: &Shared,
    parts: &http::request::Parts,
    mut rparts: http::response::Parts,
    body: B,
) -> Response<RespBody>
where
    B: Body<Data = Bytes, Error = BoxError> + Unpin + Send + 'static,
{
    if let Some(p) = &sh.compress {
        if let Some(c) = p.choose(&parts.headers, &parts.method, &rparts) {
            let body = p.apply(c, &mut rparts, body);
            return Response::from_parts(rparts, body.boxed_unsync());
        }
        // Sent as it is to this client, but compressed to others: caches
        // on the way must keep the two apart.
        if p.qualifies(&parts.headers, &parts.method, &rparts) {
            crate::compress::Policy::add_vary(&mut rparts.headers);
        }
    }
    Response::from_parts(rparts, body.boxed_unsync())
}

/// Methods that may be sent twice (RFC 9110 §9.2.2).
pub(super) fn idempotent(m: &http::Method) -> bool {
    use http::Method;
    [
        Method::GET,
        Method::HEAD,
        Method::OPTIONS,
        Method::TRACE,
        Method::PUT,
        Method::DELETE,
    ]
    .contains(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool() -> PoolRuntime {
        let cfg: convoy_config::Pool = toml::from_str(
            "outlier = { consecutive = 2 }\n\
             [[servers]]\nname = \"a\"\naddress = \"127.0.0.1:1\"\n\
             [[servers]]\nname = \"b\"\naddress = \"127.0.0.1:2\"\n",
        )
        .unwrap();
        PoolRuntime::new("p", &cfg, None)
    }

    #[test]
    fn outcomes_are_recorded_and_consecutive_failures_eject() {
        let p = pool();
        let a = &p.servers[0].state;
        let rec = |failure| record(&p, 0, (1000, Instant::now()), failure);
        rec(Some((ErrorKind::Status5xx, "consecutive 5xx")));
        assert!(!a.is_ejected(), "one failure is not enough");
        // A success in between starts the count again.
        rec(None);
        rec(Some((ErrorKind::Timeout, "response timeouts")));
        assert!(!a.is_ejected());
        rec(Some((ErrorKind::Timeout, "response timeouts")));
        assert!(a.is_ejected(), "two in a row");
        assert!(!p.servers[1].state.is_ejected());
    }

    #[test]
    fn only_idempotent_methods_are_sent_twice() {
        for m in ["GET", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE"] {
            assert!(idempotent(&m.parse().unwrap()), "{m}");
        }
        for m in ["POST", "PATCH", "CONNECT"] {
            assert!(!idempotent(&m.parse().unwrap()), "{m}");
        }
    }
}
