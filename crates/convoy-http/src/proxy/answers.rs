//! The answers convoy gives itself (400, 408, 413, 503 ...): short
//! `text/plain` bodies, with `Connection: close` where the rest of the
//! connection's bytes cannot be trusted.

use std::convert::Infallible;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};

use super::bodies::{ClientFault, RespBody};

pub(super) fn local(status: StatusCode, msg: &str) -> Response<RespBody> {
    let mut r = Response::new(
        Full::new(Bytes::from(format!("{msg}\n")))
            .map_err(|never: Infallible| match never {})
            .boxed_unsync(),
    );
    *r.status_mut() = status;
    r.headers_mut()
        .insert("content-type", HeaderValue::from_static("text/plain"));
    r.extensions_mut().insert(super::rewrite::LocalAnswer);
    r
}

/// 400 and close: after a malformed request the rest of the connection's
/// bytes cannot be trusted to frame the next request.
pub(super) fn bad_request(msg: &str) -> Response<RespBody> {
    let mut r = local(StatusCode::BAD_REQUEST, msg);
    r.headers_mut()
        .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    r
}

/// The declared length of a request body.
pub(super) fn body_len<B>(req: &Request<B>) -> Option<u64> {
    req.headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// 413 and close (the unread body would otherwise be parsed as requests).
pub(super) fn too_large() -> Response<RespBody> {
    let mut r = local(StatusCode::PAYLOAD_TOO_LARGE, "request body too large");
    r.headers_mut()
        .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    r
}

/// 408 and close: the client was too slow sending its body.
pub(super) fn client_timeout() -> Response<RespBody> {
    let mut r = local(StatusCode::REQUEST_TIMEOUT, "request body timed out");
    r.headers_mut()
        .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    r
}

pub(super) fn unavailable(msg: &str, retry_after: u64) -> Response<RespBody> {
    let mut r = local(StatusCode::SERVICE_UNAVAILABLE, msg);
    if let Ok(v) = HeaderValue::from_str(&retry_after.to_string()) {
        r.headers_mut().insert("retry-after", v);
    }
    r
}

pub(super) fn empty() -> RespBody {
    Empty::new()
        .map_err(|never: Infallible| match never {})
        .boxed_unsync()
}

/// The answer to a request that failed by the client's fault.
pub(super) fn client_fault(f: ClientFault) -> Response<RespBody> {
    match f {
        ClientFault::TooLarge => too_large(),
        ClientFault::Slow => client_timeout(),
        ClientFault::Malformed => bad_request("malformed or aborted request body"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_faults_get_their_status_and_close() {
        for (f, status) in [
            (ClientFault::TooLarge, 413),
            (ClientFault::Slow, 408),
            (ClientFault::Malformed, 400),
        ] {
            let r = client_fault(f);
            assert_eq!(r.status().as_u16(), status);
            assert_eq!(r.headers()["connection"], "close");
        }
        let r = unavailable("queue full", 3);
        assert_eq!(
            (r.status().as_u16(), &r.headers()["retry-after"]),
            (503, &HeaderValue::from_static("3"))
        );
        let req = Request::builder()
            .header("content-length", "12")
            .body(())
            .unwrap();
        assert_eq!(body_len(&req), Some(12));
    }
}
