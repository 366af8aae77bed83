#![no_main]
//! Where a chunked body ends must not depend on how its bytes arrive: fed whole, split
//! in two at a point the fuzzer picks, or one byte at a time, the decoder must consume
//! the same number of bytes and reach the same end (or refuse the same body). Decoding
//! (hyper's path on raw sockets) must agree with it, and yield the same data and
//! trailer section however the bytes arrive.
//!
//! Input: two bytes choosing the split point (little endian, modulo the body length
//! plus one), then the body.

use libfuzzer_sys::fuzz_target;

/// What the relay's decoder makes of `body` arriving as `pieces`: bytes consumed and
/// whether the body ended, or `Err` when it is malformed. The only calls into cutover.
fn feed<'a>(pieces: impl IntoIterator<Item = &'a [u8]>) -> Result<(usize, bool), ()> {
    let mut decoder = cutover::chunked::Chunked::default();
    let mut used = 0;
    for piece in pieces {
        if decoder.is_done() {
            // The relay stops reading the body once it ended; a finished decoder
            // takes nothing more.
            assert_eq!(
                decoder.advance(piece),
                Ok(0),
                "a finished body took more bytes"
            );
            break;
        }
        let n = decoder.advance(piece).map_err(|_| ())?;
        assert!(n <= piece.len(), "consumed more than it was given");
        assert!(
            n == piece.len() || decoder.is_done(),
            "stopped early without ending"
        );
        used += n;
    }
    Ok((used, decoder.is_done()))
}

/// What decoding makes of `body` arriving as `pieces`: bytes consumed, whether the
/// body ended, its data and its raw trailer section.
type Decoded = Result<(usize, bool, Vec<u8>, Vec<u8>), ()>;

fn decode<'a>(pieces: impl IntoIterator<Item = &'a [u8]>) -> Decoded {
    let mut decoder = cutover::chunked::Chunked::default();
    let (mut used, mut data, mut trailers) = (0, Vec::new(), Vec::new());
    for mut piece in pieces {
        while !piece.is_empty() && !decoder.is_done() {
            let (n, span) = decoder.decode(piece, Some(&mut trailers)).map_err(|_| ())?;
            assert!(n <= piece.len() && span.end <= n, "consumed more than it was given");
            assert!(n > 0, "took nothing from a body that has not ended");
            data.extend_from_slice(&piece[span]);
            piece = &piece[n..];
            used += n;
        }
    }
    Ok((used, decoder.is_done(), data, trailers))
}

fuzz_target!(|data: &[u8]| {
    let Some((split, body)) = data.split_first_chunk::<2>() else {
        return;
    };
    let at = usize::from(u16::from_le_bytes(*split)) % (body.len() + 1);

    let whole = feed([body]);
    let (head, tail) = body.split_at(at);
    let split = feed([head, tail]);
    let bytes = feed(body.chunks(1));
    assert_eq!(whole, split, "whole vs split at {at}: {body:?}");
    assert_eq!(whole, bytes, "whole vs byte by byte: {body:?}");

    let decoded = decode([body]);
    assert_eq!(
        decoded.as_ref().map(|d| (d.0, d.1)).map_err(|_| ()),
        whole,
        "decoding and finding the end disagree: {body:?}"
    );
    assert_eq!(decoded, decode([head, tail]), "decoded whole vs split at {at}: {body:?}");
    assert_eq!(decoded, decode(body.chunks(1)), "decoded whole vs byte by byte: {body:?}");

    if let Ok((n, done)) = whole {
        assert!(n <= body.len());
        if done {
            // The last chunk and the trailer section both end with CRLF.
            assert!(
                body[..n].ends_with(b"\r\n\r\n"),
                "ended without an empty line: {body:?}"
            );
        } else {
            assert_eq!(n, body.len(), "stopped early without ending: {body:?}");
        }
    }
});
