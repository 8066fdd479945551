//! HTTP/2 frames (RFC 9113 §4, §6): the 9-byte head, the types, flags,
//! error codes, settings, and writers for what a server sends.

/// Frame types.
pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const PRIORITY: u8 = 0x2;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const PUSH_PROMISE: u8 = 0x5;
pub const PING: u8 = 0x6;
pub const GOAWAY: u8 = 0x7;
pub const WINDOW_UPDATE: u8 = 0x8;
pub const CONTINUATION: u8 = 0x9;

/// Flags.
pub const END_STREAM: u8 = 0x1;
pub const ACK: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;
pub const PADDED: u8 = 0x8;
pub const PRIORITY_FLAG: u8 = 0x20;

/// Settings identifiers.
pub const HEADER_TABLE_SIZE: u16 = 0x1;
pub const ENABLE_PUSH: u16 = 0x2;
pub const MAX_CONCURRENT_STREAMS: u16 = 0x3;
pub const INITIAL_WINDOW_SIZE: u16 = 0x4;
pub const MAX_FRAME_SIZE: u16 = 0x5;
pub const MAX_HEADER_LIST_SIZE: u16 = 0x6;

/// The largest frame payload we accept (our SETTINGS_MAX_FRAME_SIZE is
/// the default).
pub const OUR_MAX_FRAME: usize = 16_384;
/// The largest window RFC 9113 allows.
pub const MAX_WINDOW: i64 = (1 << 31) - 1;
/// The window both sides start with.
pub const DEFAULT_WINDOW: i64 = 65_535;

/// The client connection preface.
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Error codes (RFC 9113 §7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reason(pub u32);

impl Reason {
    pub const NO_ERROR: Reason = Reason(0x0);
    pub const PROTOCOL_ERROR: Reason = Reason(0x1);
    pub const INTERNAL_ERROR: Reason = Reason(0x2);
    pub const FLOW_CONTROL_ERROR: Reason = Reason(0x3);
    pub const STREAM_CLOSED: Reason = Reason(0x5);
    pub const FRAME_SIZE_ERROR: Reason = Reason(0x6);
    pub const REFUSED_STREAM: Reason = Reason(0x7);
    pub const CANCEL: Reason = Reason(0x8);
    pub const COMPRESSION_ERROR: Reason = Reason(0x9);
    pub const ENHANCE_YOUR_CALM: Reason = Reason(0xb);
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = match self.0 {
            0x0 => "NO_ERROR",
            0x1 => "PROTOCOL_ERROR",
            0x2 => "INTERNAL_ERROR",
            0x3 => "FLOW_CONTROL_ERROR",
            0x4 => "SETTINGS_TIMEOUT",
            0x5 => "STREAM_CLOSED",
            0x6 => "FRAME_SIZE_ERROR",
            0x7 => "REFUSED_STREAM",
            0x8 => "CANCEL",
            0x9 => "COMPRESSION_ERROR",
            0xa => "CONNECT_ERROR",
            0xb => "ENHANCE_YOUR_CALM",
            0xc => "INADEQUATE_SECURITY",
            0xd => "HTTP_1_1_REQUIRED",
            n => return write!(f, "error code {n:#x}"),
        };
        f.write_str(s)
    }
}

/// A frame's head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    pub len: usize,
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
}

impl Head {
    /// Reads the 9 bytes of a frame head.
    pub fn parse(b: &[u8; 9]) -> Head {
        Head {
            len: (usize::from(b[0]) << 16) | (usize::from(b[1]) << 8) | usize::from(b[2]),
            kind: b[3],
            flags: b[4],
            // The reserved bit is ignored.
            stream: u32::from_be_bytes([b[5], b[6], b[7], b[8]]) & 0x7fff_ffff,
        }
    }
}

/// Appends a frame head.
pub fn head(dst: &mut Vec<u8>, len: usize, kind: u8, flags: u8, stream: u32) {
    let l = (len as u32).to_be_bytes();
    dst.extend_from_slice(&[l[1], l[2], l[3], kind, flags]);
    dst.extend_from_slice(&stream.to_be_bytes());
}

/// Overwrites the length of the frame head at `at`.
pub fn patch_len(dst: &mut [u8], at: usize, len: usize) {
    let l = (len as u32).to_be_bytes();
    dst[at..at + 3].copy_from_slice(&l[1..]);
}

pub fn rst_stream(dst: &mut Vec<u8>, stream: u32, r: Reason) {
    head(dst, 4, RST_STREAM, 0, stream);
    dst.extend_from_slice(&r.0.to_be_bytes());
}

pub fn window_update(dst: &mut Vec<u8>, stream: u32, inc: u32) {
    head(dst, 4, WINDOW_UPDATE, 0, stream);
    dst.extend_from_slice(&inc.to_be_bytes());
}

pub fn goaway(dst: &mut Vec<u8>, last: u32, r: Reason, debug: &str) {
    head(dst, 8 + debug.len(), GOAWAY, 0, 0);
    dst.extend_from_slice(&last.to_be_bytes());
    dst.extend_from_slice(&r.0.to_be_bytes());
    dst.extend_from_slice(debug.as_bytes());
}

pub fn settings(dst: &mut Vec<u8>, values: &[(u16, u32)]) {
    head(dst, 6 * values.len(), SETTINGS, 0, 0);
    for (id, v) in values {
        dst.extend_from_slice(&id.to_be_bytes());
        dst.extend_from_slice(&v.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_round_trip() {
        let mut b = Vec::new();
        head(
            &mut b,
            0x01_02_03,
            HEADERS,
            END_HEADERS | END_STREAM,
            0x7fff_ffff,
        );
        let h = Head::parse(b[..9].try_into().unwrap());
        assert_eq!(
            h,
            Head {
                len: 0x01_02_03,
                kind: HEADERS,
                flags: 5,
                stream: 0x7fff_ffff
            }
        );
        // The reserved bit does not reach the stream id.
        b[5] |= 0x80;
        assert_eq!(Head::parse(b[..9].try_into().unwrap()).stream, 0x7fff_ffff);
        patch_len(&mut b, 0, 7);
        assert_eq!(Head::parse(b[..9].try_into().unwrap()).len, 7);
        assert_eq!(Reason::ENHANCE_YOUR_CALM.to_string(), "ENHANCE_YOUR_CALM");
    }
}
