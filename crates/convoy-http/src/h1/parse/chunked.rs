//! The chunked transfer coding (RFC 9112 §7.1): the incremental decoder
//! and the head of a chunk convoy writes.

use bytes::{Bytes, BytesMut};

/// Why a chunked body is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ChunkError(pub &'static str);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ChunkState {
    /// Hex digits of a chunk size.
    Size,
    /// After the size: extensions up to CR.
    Ext,
    /// Expecting LF after the size line's CR.
    SizeLf,
    /// Chunk data.
    Data,
    /// CR after the data.
    DataCr,
    /// LF after the data.
    DataLf,
    /// A trailer line's first byte (CR of the final empty line, or a field).
    TrailerStart,
    /// A trailer field's name, up to its colon.
    TrailerName,
    /// A trailer field's value, up to its CR.
    Trailer,
    /// LF after a trailer field.
    TrailerLf,
    /// LF of the final empty line.
    EndLf,
    /// The body ended.
    Done,
}

/// Most bytes of chunk extensions on one size line, and of all trailers.
const MAX_CHUNK_LINE: usize = 4096;
const MAX_TRAILERS: usize = 16 * 1024;

/// Decodes the chunked transfer coding (RFC 9112 §7.1) incrementally.
/// Trailer fields are checked for size and dropped.
#[derive(Clone, Debug)]
pub struct ChunkedDecoder {
    state: ChunkState,
    size: u64,
    digits: u32,
    line: usize,
    trailers: usize,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        ChunkedDecoder {
            state: ChunkState::Size,
            size: 0,
            digits: 0,
            line: 0,
            trailers: 0,
        }
    }
}

/// One step of [`ChunkedDecoder::decode`].
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    /// Body bytes.
    Data(Bytes),
    /// The body is complete (its last byte was taken off the buffer).
    End,
    /// Everything in the buffer was consumed; read more.
    NeedMore,
}

impl ChunkedDecoder {
    /// The whole body was decoded.
    pub fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Takes the next piece of body from `buf`.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, ChunkError> {
        use bytes::Buf;
        loop {
            match self.state {
                ChunkState::Done => return Ok(Decoded::End),
                ChunkState::Data => {
                    if buf.is_empty() {
                        return Ok(Decoded::NeedMore);
                    }
                    let n = (buf.len() as u64).min(self.size) as usize;
                    self.size -= n as u64;
                    if self.size == 0 {
                        self.state = ChunkState::DataCr;
                    }
                    return Ok(Decoded::Data(buf.split_to(n).freeze()));
                }
                _ => {}
            }
            let mut i = 0;
            while i < buf.len() && !matches!(self.state, ChunkState::Data | ChunkState::Done) {
                self.step(buf[i])?;
                i += 1;
            }
            buf.advance(i);
            if !matches!(self.state, ChunkState::Data | ChunkState::Done) {
                return Ok(Decoded::NeedMore);
            }
        }
    }

    /// Counts one byte of trailers against their limit.
    fn count_trailer(&mut self) -> Result<(), ChunkError> {
        self.trailers += 1;
        if self.trailers > MAX_TRAILERS {
            return Err(ChunkError("trailers too large"));
        }
        Ok(())
    }

    /// One byte of a size line, data delimiter or trailer.
    fn step(&mut self, b: u8) -> Result<(), ChunkError> {
        use ChunkState::*;
        match self.state {
            Size => match b {
                b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                    if self.digits >= 15 {
                        return Err(ChunkError("chunk size too large"));
                    }
                    let d = (b as char).to_digit(16).unwrap_or(0);
                    self.size = self.size * 16 + u64::from(d);
                    self.digits += 1;
                }
                b';' | b' ' | b'\t' if self.digits > 0 => {
                    self.state = Ext;
                    self.line = 0;
                }
                b'\r' if self.digits > 0 => self.state = SizeLf,
                _ => return Err(ChunkError("invalid chunk size")),
            },
            Ext => match b {
                b'\r' => self.state = SizeLf,
                b'\n' | 0 => return Err(ChunkError("invalid chunk extension")),
                _ => {
                    self.line += 1;
                    if self.line > MAX_CHUNK_LINE {
                        return Err(ChunkError("chunk extension too long"));
                    }
                }
            },
            SizeLf => {
                if b != b'\n' {
                    return Err(ChunkError("invalid chunk size line"));
                }
                self.digits = 0;
                self.state = if self.size == 0 { TrailerStart } else { Data };
            }
            DataCr => {
                if b != b'\r' {
                    return Err(ChunkError("chunk data longer than its size"));
                }
                self.state = DataLf;
            }
            DataLf => {
                if b != b'\n' {
                    return Err(ChunkError("invalid chunk end"));
                }
                self.state = Size;
                self.size = 0;
            }
            // A trailer line is a field, `name: value` (RFC 9112 §7.1.2):
            // anything else (a request line smuggled after the last
            // chunk, a bare word) is refused.
            TrailerStart => match b {
                b'\r' => self.state = EndLf,
                _ if is_tchar(b) => {
                    self.state = TrailerName;
                    self.count_trailer()?;
                }
                _ => return Err(ChunkError("invalid trailer field")),
            },
            TrailerName => match b {
                b':' => {
                    self.state = Trailer;
                    self.count_trailer()?;
                }
                _ if is_tchar(b) => self.count_trailer()?,
                _ => return Err(ChunkError("invalid trailer field name")),
            },
            Trailer => match b {
                b'\r' => self.state = TrailerLf,
                b'\t' | b' '..=b'~' | 0x80..=0xff => self.count_trailer()?,
                _ => return Err(ChunkError("invalid trailer field value")),
            },
            TrailerLf => {
                if b != b'\n' {
                    return Err(ChunkError("invalid trailer"));
                }
                self.state = TrailerStart;
            }
            EndLf => {
                if b != b'\n' {
                    return Err(ChunkError("invalid end of chunked body"));
                }
                self.state = Done;
            }
            Data | Done => {}
        }
        Ok(())
    }
}

/// A token character (RFC 9110 §5.6.2).
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// The head of a chunk of `n` bytes (`{hex}\r\n`).
pub fn chunk_head(n: usize) -> Bytes {
    Bytes::from(format!("{n:x}\r\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(input: &[u8], split: usize) -> Result<(Vec<u8>, bool, Vec<u8>), ChunkError> {
        let mut d = ChunkedDecoder::default();
        let mut out = Vec::new();
        let mut buf = BytesMut::new();
        let mut done = false;
        for piece in input.chunks(split.max(1)) {
            buf.extend_from_slice(piece);
            loop {
                match d.decode(&mut buf)? {
                    Decoded::Data(b) => out.extend_from_slice(&b),
                    Decoded::End => {
                        done = true;
                        break;
                    }
                    Decoded::NeedMore => break,
                }
            }
            if done {
                break;
            }
        }
        Ok((out, done, buf.to_vec()))
    }

    #[test]
    fn chunked_bodies() {
        let body = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-T: 1\r\n\r\nNEXT";
        for split in [1, 2, 3, 7, 100] {
            let (out, done, rest) = decode_all(body, split).unwrap();
            assert_eq!(out, b"hello world", "split {split}");
            assert!(done);
            if split >= 100 {
                assert_eq!(rest, b"NEXT");
            }
        }
        let (out, done, _) = decode_all(b"A\r\n0123456789\r\n0\r\n\r\n", 4).unwrap();
        assert_eq!((out.len(), done), (10, true));
        for bad in [
            &b"zz\r\nhello\r\n0\r\n\r\n"[..],
            b"5\r\nhello!\r\n0\r\n\r\n",
            b"5\nhello\r\n0\r\n\r\n",
            b"ffffffffffffffffff\r\n",
            b"\r\n",
            b"-5\r\nhello\r\n",
            b"5\r\nhello\r\n0\r\n bad\r\n\r\n",
            // Trailer lines must be fields: a request line smuggled after
            // the last chunk, a bare word, a bad name, a control byte.
            b"5\r\nhello\r\n0\r\nGET /admin HTTP/1.1\r\n\r\n",
            b"0\r\nword\r\n\r\n",
            b"0\r\nX T: 1\r\n\r\n",
            b"0\r\n: 1\r\n\r\n",
            b"0\r\nX-T: a\x01b\r\n\r\n",
        ] {
            assert!(
                decode_all(bad, 1).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        // Incomplete stays incomplete.
        let (out, done, _) = decode_all(b"5\r\nhel", 100).unwrap();
        assert_eq!((out.as_slice(), done), (&b"hel"[..], false));
    }
}
