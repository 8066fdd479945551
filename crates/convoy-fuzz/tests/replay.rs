//! Replays the fuzz corpus (fuzz/corpus/TARGET/*) through the targets, so
//! every input ever saved — seeds and past crashes — stays fixed.

use std::path::Path;

fn replay(target: &str, f: fn(&[u8])) -> usize {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target);
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let p = e.unwrap().path();
        let data = std::fs::read(&p).unwrap();
        f(&data);
        n += 1;
    }
    n
}

#[test]
fn http_request_corpus() {
    assert!(replay("http_request", convoy_fuzz::http_request) >= 5);
}

#[test]
fn http_response_corpus() {
    assert!(replay("http_response", convoy_fuzz::http_response) >= 5);
}

#[test]
fn proxy_protocol_corpus() {
    assert!(replay("proxy_protocol", convoy_fuzz::proxy_protocol) >= 3);
}

#[test]
fn config_corpus() {
    assert!(replay("config", convoy_fuzz::config) >= 3);
}

#[test]
fn http2_conn_corpus() {
    assert!(replay("http2_conn", convoy_fuzz::http2_conn) >= 3);
}

#[test]
fn cluster_datagram_corpus() {
    assert!(replay("cluster_datagram", convoy_fuzz::cluster_datagram) >= 3);
}
