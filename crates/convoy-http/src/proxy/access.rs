//! The access-log line of one HTTP request, built only when the log is
//! on and written when the response body ends (see [`super::bodies::Tracked`]).

use std::net::SocketAddr;

use http::Request;
use tokio::time::Instant;

/// What the access log says about one request; built only when the log is
/// on.
pub(super) struct AccessRec {
    pub(super) start: Instant,
    pub(super) listener: String,
    pub(super) client: std::net::IpAddr,
    pub(super) method: http::Method,
    pub(super) target: String,
    pub(super) host: String,
    pub(super) version: http::Version,
    pub(super) route: String,
    pub(super) class: usize,
    pub(super) cost: u32,
    pub(super) pool: String,
    pub(super) server: Option<String>,
    pub(super) tier: Option<u32>,
    pub(super) queue_ms: u64,
    pub(super) server_ms: Option<u64>,
    pub(super) retries: usize,
    pub(super) status: u16,
    pub(super) bytes: u64,
    pub(super) request_id: Option<String>,
}

impl AccessRec {
    pub(super) fn new<B>(listener: &str, peer: SocketAddr, req: &Request<B>) -> Self {
        AccessRec {
            start: Instant::now(),
            listener: listener.to_string(),
            client: peer.ip(),
            method: req.method().clone(),
            target: req
                .uri()
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_string(),
            host: req
                .headers()
                .get(http::header::HOST)
                .and_then(|v| v.to_str().ok())
                .or_else(|| req.uri().authority().map(|a| a.as_str()))
                .unwrap_or("")
                .to_string(),
            version: req.version(),
            route: String::new(),
            class: 0,
            cost: 0,
            pool: String::new(),
            server: None,
            tier: None,
            queue_ms: 0,
            server_ms: None,
            retries: 0,
            status: 0,
            bytes: 0,
            request_id: None,
        }
    }

    pub(super) fn line(&self) -> String {
        serde_json::json!({
            "time_ms": convoy_core::access::epoch_ms(),
            "kind": "http",
            "listener": self.listener,
            "client": self.client.to_string(),
            "method": self.method.as_str(),
            "target": self.target,
            "host": self.host,
            "version": format!("{:?}", self.version),
            "route": self.route,
            "class": self.class,
            "cost": self.cost,
            "pool": self.pool,
            "server": self.server,
            "tier": self.tier,
            "queue_ms": self.queue_ms,
            "server_ms": self.server_ms,
            "total_ms": self.start.elapsed().as_millis() as u64,
            "retries": self.retries,
            "status": self.status,
            "bytes_out": self.bytes,
            "request_id": self.request_id,
        })
        .to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_is_one_json_object_with_the_request() {
        let req = Request::get("/a?b=c")
            .header("host", "shop.example")
            .body(())
            .unwrap();
        let mut r = AccessRec::new("web", "192.0.2.7:4000".parse().unwrap(), &req);
        r.status = 200;
        r.server = Some("a".into());
        let v: serde_json::Value = serde_json::from_str(&r.line()).unwrap();
        assert_eq!(v["kind"], "http");
        assert_eq!(v["client"], "192.0.2.7");
        assert_eq!(v["target"], "/a?b=c");
        assert_eq!(v["host"], "shop.example");
        assert_eq!(v["server"], "a");
        assert_eq!(v["status"], 200);
    }
}
