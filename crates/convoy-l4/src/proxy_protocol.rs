//! PROXY protocol (HAProxy's spec) versions 1 (text) and 2 (binary): the
//! header convoy sends to a server before the client's bytes, so the server
//! sees the real client address, and a parser for it (used by tests and
//! fuzzing, and by listeners that accept the header in future).

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

/// The 12-byte v2 signature.
pub const V2_SIG: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// Normalizes a (source, destination) pair to one address family: an
/// IPv4-mapped IPv6 address becomes IPv4; if the families still differ,
/// both become IPv6.
fn same_family(src: SocketAddr, dst: SocketAddr) -> (SocketAddr, SocketAddr) {
    let unmap = |a: SocketAddr| match a.ip() {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), a.port()),
            None => a,
        },
        _ => a,
    };
    let (s, d) = (unmap(src), unmap(dst));
    let to6 = |a: SocketAddr| match a.ip() {
        IpAddr::V4(v4) => SocketAddr::new(IpAddr::V6(v4.to_ipv6_mapped()), a.port()),
        _ => a,
    };
    if s.is_ipv4() == d.is_ipv4() {
        (s, d)
    } else {
        (to6(s), to6(d))
    }
}

/// The v1 header for a TCP connection from `src` to `dst`.
pub fn v1(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let (s, d) = same_family(src, dst);
    let fam = if s.is_ipv4() { "TCP4" } else { "TCP6" };
    format!(
        "PROXY {fam} {} {} {} {}\r\n",
        s.ip(),
        d.ip(),
        s.port(),
        d.port()
    )
    .into_bytes()
}

/// The v2 header for a TCP connection from `src` to `dst`.
pub fn v2(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let (s, d) = same_family(src, dst);
    let mut out = Vec::with_capacity(52);
    out.extend_from_slice(&V2_SIG);
    out.push(0x21); // version 2, PROXY command
    match (s.ip(), d.ip()) {
        (IpAddr::V4(a), IpAddr::V4(b)) => {
            out.push(0x11); // AF_INET, STREAM
            out.extend_from_slice(&12u16.to_be_bytes());
            out.extend_from_slice(&a.octets());
            out.extend_from_slice(&b.octets());
        }
        (a, b) => {
            let v6 = |ip: IpAddr| match ip {
                IpAddr::V6(x) => x,
                IpAddr::V4(x) => x.to_ipv6_mapped(),
            };
            out.push(0x21); // AF_INET6, STREAM
            out.extend_from_slice(&36u16.to_be_bytes());
            out.extend_from_slice(&v6(a).octets());
            out.extend_from_slice(&v6(b).octets());
        }
    }
    out.extend_from_slice(&s.port().to_be_bytes());
    out.extend_from_slice(&d.port().to_be_bytes());
    out
}

/// A parsed header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Client address, or `None` for LOCAL / UNKNOWN.
    pub addrs: Option<(SocketAddr, SocketAddr)>,
    /// Header length in bytes.
    pub len: usize,
}

/// A malformed header.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid PROXY protocol header: {0}")]
pub struct ParseError(pub &'static str);

/// Parses a header at the start of `buf`. `Ok(None)` means more bytes are
/// needed.
pub fn parse(buf: &[u8]) -> Result<Option<Header>, ParseError> {
    if buf.len() >= 12 && buf[..12] == V2_SIG {
        return parse_v2(buf);
    }
    if V2_SIG.starts_with(buf) && !buf.is_empty() && buf[0] == b'\r' {
        return Ok(None);
    }
    parse_v1(buf)
}

fn parse_v1(buf: &[u8]) -> Result<Option<Header>, ParseError> {
    const MAX: usize = 107;
    let prefix = b"PROXY ";
    let n = buf.len().min(prefix.len());
    if buf[..n] != prefix[..n] {
        return Err(ParseError("no PROXY signature"));
    }
    let Some(end) = buf.windows(2).take(MAX).position(|w| w == b"\r\n") else {
        return if buf.len() >= MAX {
            Err(ParseError("v1 header longer than 107 bytes"))
        } else {
            Ok(None)
        };
    };
    let line = std::str::from_utf8(&buf[..end]).map_err(|_| ParseError("v1 header not ASCII"))?;
    let parts: Vec<&str> = line.split(' ').collect();
    let len = end + 2;
    match parts.as_slice() {
        ["PROXY", "UNKNOWN", ..] => Ok(Some(Header { addrs: None, len })),
        ["PROXY", fam @ ("TCP4" | "TCP6"), s, d, sp, dp] => {
            let ip = |x: &str| -> Result<IpAddr, ParseError> {
                let ip: IpAddr = x.parse().map_err(|_| ParseError("bad v1 address"))?;
                if ip.is_ipv4() != (*fam == "TCP4") {
                    return Err(ParseError("v1 address does not match family"));
                }
                Ok(ip)
            };
            let port = |x: &str| -> Result<u16, ParseError> {
                if x.len() > 1 && x.starts_with('0') {
                    return Err(ParseError("v1 port has leading zero"));
                }
                x.parse().map_err(|_| ParseError("bad v1 port"))
            };
            Ok(Some(Header {
                addrs: Some((
                    SocketAddr::new(ip(s)?, port(sp)?),
                    SocketAddr::new(ip(d)?, port(dp)?),
                )),
                len,
            }))
        }
        _ => Err(ParseError("malformed v1 header")),
    }
}

fn parse_v2(buf: &[u8]) -> Result<Option<Header>, ParseError> {
    if buf.len() < 16 {
        return Ok(None);
    }
    let ver_cmd = buf[12];
    if ver_cmd >> 4 != 2 {
        return Err(ParseError("unsupported v2 version"));
    }
    let fam = buf[13];
    let body = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    let len = 16 + body;
    if buf.len() < len {
        return Ok(None);
    }
    let b = &buf[16..len];
    let addrs = match (ver_cmd & 0x0f, fam) {
        (0, _) => None,
        (1, 0x11) | (1, 0x12) => {
            if b.len() < 12 {
                return Err(ParseError("v2 IPv4 block too short"));
            }
            let ip = |o: usize| IpAddr::from([b[o], b[o + 1], b[o + 2], b[o + 3]]);
            let port = |o: usize| u16::from_be_bytes([b[o], b[o + 1]]);
            Some((
                SocketAddr::new(ip(0), port(8)),
                SocketAddr::new(ip(4), port(10)),
            ))
        }
        (1, 0x21) | (1, 0x22) => {
            if b.len() < 36 {
                return Err(ParseError("v2 IPv6 block too short"));
            }
            let ip = |o: usize| {
                let mut a = [0u8; 16];
                a.copy_from_slice(&b[o..o + 16]);
                IpAddr::V6(Ipv6Addr::from(a))
            };
            let port = |o: usize| u16::from_be_bytes([b[o], b[o + 1]]);
            Some((
                SocketAddr::new(ip(0), port(32)),
                SocketAddr::new(ip(16), port(34)),
            ))
        }
        (1, _) => None,
        _ => return Err(ParseError("unknown v2 command")),
    };
    Ok(Some(Header { addrs, len }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn v1_text() {
        let h = v1(sa("127.0.0.2:5000"), sa("127.0.0.1:80"));
        assert_eq!(h, b"PROXY TCP4 127.0.0.2 127.0.0.1 5000 80\r\n");
        let h6 = v1(sa("[::1]:5000"), sa("127.0.0.1:80"));
        assert_eq!(h6, b"PROXY TCP6 ::1 ::ffff:127.0.0.1 5000 80\r\n");
    }

    #[test]
    fn v2_binary_layout() {
        let h = v2(sa("127.0.0.2:5000"), sa("127.0.0.1:80"));
        assert_eq!(h.len(), 28);
        assert_eq!(&h[..12], &V2_SIG);
        assert_eq!(h[12], 0x21);
        assert_eq!(h[13], 0x11);
        assert_eq!(&h[16..20], &[127, 0, 0, 2]);
        assert_eq!(&h[24..26], &5000u16.to_be_bytes());
    }

    #[test]
    fn partial_and_bad() {
        let h = v2(sa("[::1]:1"), sa("[::2]:2"));
        for cut in 0..h.len() {
            assert_eq!(parse(&h[..cut]), Ok(None), "cut {cut}");
        }
        assert!(parse(b"GET / HTTP/1.1\r\n").is_err());
        assert!(parse(b"PROXY TCP4 1.2.3.4 ::1 1 2\r\n").is_err());
        assert!(parse(b"PROXY TCP4 1.2.3.4 1.2.3.5 01 2\r\n").is_err());
        assert!(parse(&[b'P'; 200]).is_err());
    }

    proptest! {
        #[test]
        fn round_trip(a in any::<[u8; 4]>(), b in any::<[u8; 16]>(), p1 in 1u16.., p2 in 1u16.., six in any::<bool>()) {
            let src = if six { SocketAddr::new(IpAddr::V6(Ipv6Addr::from(b)), p1) } else { SocketAddr::new(IpAddr::from(a), p1) };
            let dst = SocketAddr::new(IpAddr::V6(Ipv6Addr::from(b)), p2);
            let (ns, nd) = same_family(src, dst);
            for h in [v1(src, dst), v2(src, dst)] {
                let mut with_data = h.clone();
                with_data.extend_from_slice(b"payload");
                let got = parse(&with_data).unwrap().unwrap();
                prop_assert_eq!(got.len, h.len());
                prop_assert_eq!(got.addrs, Some((ns, nd)));
            }
        }

        #[test]
        fn never_panics(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse(&data);
        }
    }
}
