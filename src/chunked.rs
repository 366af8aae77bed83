//! Where a chunked body ends (RFC 9112 §7.1), found in the bytes the relay copies
//! through without changing them.

/// The chunked framing was broken: the body cannot be relayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed chunked body")]
pub struct Malformed;

/// Longest trailer section accepted.
const MAX_TRAILERS: usize = 64 * 1024;
/// Most chunk-extension bytes accepted in one body (hyper's decoder allows as many):
/// every one is framing, so without a bound a backend could keep a body busy with no
/// data and no end.
const MAX_EXTENSIONS: usize = 16 * 1024;

/// Finds the end of a chunked body (RFC 9112 §7.1) in the bytes relayed through it,
/// strictly: CRLF line ends, hex sizes that fit in 64 bits, trailers bounded. What it
/// accepts a lenient recipient reads the same way, so the client and the relay agree
/// on where the body ends.
#[derive(Debug, Default)]
pub struct Chunked {
    /// Where in the chunked syntax the next byte falls.
    state: ChunkState,
    /// Bytes of the current chunk's data still to come; digits while reading a size.
    size: u64,
    /// Hex digits of the chunk size read so far: a size line needs at least one, and
    /// more than 16 would not fit in `size`.
    digits: u8,
    /// Trailer bytes so far.
    trailer: usize,
    /// Chunk-extension bytes so far, in all of the body's size lines.
    extensions: usize,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    #[default]
    Size,
    Extension,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    TrailerStart,
    TrailerLine,
    TrailerLf,
    EndLf,
    Done,
}

impl Chunked {
    pub fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Reads `bytes` (the next ones of the body); returns how many belong to it. Fewer
    /// than `bytes.len()` only when the body ended.
    pub fn advance(&mut self, bytes: &[u8]) -> Result<usize, Malformed> {
        use ChunkState::*;
        let mut i = 0;
        while i < bytes.len() && self.state != Done {
            if self.state == Data {
                let take = (bytes.len() - i).min(usize::try_from(self.size).unwrap_or(usize::MAX));
                i += take;
                self.size -= take as u64;
                if self.size == 0 {
                    self.state = DataCr;
                }
                continue;
            }
            let b = bytes[i];
            i += 1;
            self.state = match (self.state, b) {
                (Size, b) if b.is_ascii_hexdigit() => {
                    if self.digits == 16 {
                        return Err(Malformed);
                    }
                    self.digits += 1;
                    self.size = self.size << 4 | u64::from(hex_value(b));
                    Size
                }
                (Size, b'\r') if self.digits > 0 => SizeLf,
                (Size, b';' | b' ' | b'\t') if self.digits > 0 => Extension,
                (Extension, b'\r') => SizeLf,
                (Extension, b) if b != b'\n' => Extension,
                (SizeLf, b'\n') if self.size == 0 => TrailerStart,
                (SizeLf, b'\n') => Data,
                (DataCr, b'\r') => DataLf,
                (DataLf, b'\n') => {
                    self.digits = 0;
                    Size
                }
                (TrailerStart, b'\r') => EndLf,
                (TrailerStart | TrailerLine, b) if b != b'\n' && b != b'\r' => TrailerLine,
                (TrailerLine, b'\r') => TrailerLf,
                (TrailerLf, b'\n') => TrailerStart,
                (EndLf, b'\n') => Done,
                _ => return Err(Malformed),
            };
            if matches!(self.state, Extension) {
                self.extensions += 1;
                if self.extensions > MAX_EXTENSIONS {
                    return Err(Malformed);
                }
            }
            if matches!(self.state, TrailerLine) {
                self.trailer += 1;
                if self.trailer > MAX_TRAILERS {
                    return Err(Malformed);
                }
            }
        }
        Ok(i)
    }
}

impl Chunked {
    /// Decodes the start of `bytes`: the framing before the next chunk data is consumed,
    /// then as much of that data as `bytes` holds. Returns how many bytes were consumed
    /// and where in `bytes` the data is (empty when the framing took them all). Trailer
    /// bytes, when `trailers` is given, are appended to it as they are consumed, so the
    /// caller can parse the section once the body is done.
    pub fn decode(
        &mut self,
        bytes: &[u8],
        mut trailers: Option<&mut Vec<u8>>,
    ) -> Result<(usize, std::ops::Range<usize>), Malformed> {
        let mut i = 0;
        while i < bytes.len() && !self.is_done() {
            if self.state == ChunkState::Data {
                let n = (bytes.len() - i).min(usize::try_from(self.size).unwrap_or(usize::MAX));
                self.size -= n as u64;
                if self.size == 0 {
                    self.state = ChunkState::DataCr;
                }
                return Ok((i + n, i..i + n));
            }
            let in_trailers = matches!(
                self.state,
                ChunkState::TrailerStart
                    | ChunkState::TrailerLine
                    | ChunkState::TrailerLf
                    | ChunkState::EndLf
            );
            let one = &bytes[i..=i];
            i += self.advance(one)?;
            if let (true, Some(t)) = (in_trailers, trailers.as_deref_mut()) {
                t.extend_from_slice(one);
            }
        }
        Ok((i, i..i))
    }
}

/// Whether the body bytes that came with a chunked response's head are well framed so
/// far: every path judges them before the head is sent on (a 502 when not).
pub fn start_is_sound(bytes: &[u8]) -> bool {
    Chunked::default().advance(bytes).is_ok()
}

fn hex_value(b: u8) -> u8 {
    match b {
        b'0'..=b'9' => b - b'0',
        b'a'..=b'f' => b - b'a' + 10,
        _ => b - b'A' + 10,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunked(body: &[u8]) -> Result<(usize, bool), Malformed> {
        let mut c = Chunked::default();
        // Byte by byte and whole must agree.
        let mut one = Chunked::default();
        let mut used = 0;
        for b in body {
            if one.is_done() {
                break;
            }
            used += one.advance(std::slice::from_ref(b))?;
        }
        let n = c.advance(body)?;
        assert_eq!((n, c.is_done()), (used, one.is_done()));
        Ok((n, c.is_done()))
    }

    #[test]
    fn a_chunked_body_ends_after_its_last_chunk_and_trailers_and_not_before() {
        let body = b"5\r\nhello\r\n1;ext=1\r\n!\r\n0\r\nx-sum: 1\r\n\r\nNEXT";
        assert_eq!(chunked(body), Ok((body.len() - 4, true)));
        assert_eq!(chunked(b"5\r\nhel"), Ok((6, false)));
        assert_eq!(chunked(b"0\r\n\r\n"), Ok((5, true)));
    }

    #[test]
    fn decoding_yields_the_data_and_the_trailer_section_in_any_split() {
        let body = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nx-sum: 1\r\n\r\nNEXT";
        for step in [1, 2, 3, 7, body.len()] {
            let (mut c, mut data, mut trailers, mut at) = (Chunked::default(), vec![], vec![], 0);
            while !c.is_done() {
                let end = (at + step).min(body.len());
                let mut piece = &body[at..end];
                while !piece.is_empty() && !c.is_done() {
                    let (n, span) = c.decode(piece, Some(&mut trailers)).expect("well formed");
                    data.extend_from_slice(&piece[span]);
                    piece = &piece[n..];
                    at += n;
                }
            }
            assert_eq!(data, b"hello world", "step {step}");
            assert_eq!(trailers, b"x-sum: 1\r\n\r\n", "step {step}");
            assert_eq!(&body[at..], b"NEXT", "step {step}");
        }
    }

    #[test]
    fn chunk_extensions_are_bounded_per_body() {
        let mut body = b"1;".to_vec();
        body.extend(std::iter::repeat_n(b'e', MAX_EXTENSIONS - 1));
        body.extend_from_slice(b"\r\nx\r\n");
        assert_eq!(chunked(&body), Ok((body.len(), false)));
        body.extend_from_slice(b"1;e\r\nx\r\n");
        assert_eq!(chunked(&body), Err(Malformed));
    }

    #[test]
    fn malformed_chunked_bodies_are_refused() {
        for bad in [
            &b"x\r\n"[..],
            b"5\nhello\r\n",
            b"5\r\nhelloX\r\n",
            b"11111111111111111\r\n",
            b"\r\n",
            b"0\r\nx-sum: 1\n\r\n",
        ] {
            assert_eq!(chunked(bad), Err(Malformed), "{bad:?}");
        }
    }
}
