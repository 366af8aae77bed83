#![no_main]
//! A backend response head the relay accepts must reach the client as one complete
//! response that a standard parser (httparse) reads back, with the same status, framed
//! the way the relay will send the body.
//!
//! Input: one flag byte (bit 0: the request was HEAD; bit 1: this is the connection's
//! last response; bit 2: no colour header), then the response head.

use libfuzzer_sys::fuzz_target;

/// How the relay sends the body on, as seen by these checks.
#[derive(Debug, PartialEq)]
enum Framing {
    Empty,
    Length(u64),
    Chunked,
    Close,
}

/// The only calls into cutover: the status, the framing and the head as the client
/// gets it, or `None` when the relay refuses the response or needs more bytes.
fn forwarded(
    bytes: &[u8],
    head_request: bool,
    color: Option<&str>,
    close: bool,
) -> Option<(u16, Framing, Vec<u8>)> {
    use cutover::h1::{fields, parse_response};
    use cutover::rules::Limits;
    use cutover::rules::response::Framing as F;
    let mut storage = fields();
    let resp = parse_response(bytes, &mut storage, head_request, &Limits::default()).ok()??;
    let framing = match resp.plan.framing {
        F::Empty => Framing::Empty,
        F::Length(n) => Framing::Length(n),
        F::Chunked => Framing::Chunked,
        F::Close => Framing::Close,
    };
    let mut out = Vec::new();
    resp.write_forwarded(color, &cutover::routing::SetCookies::default(), close, &mut out);
    Some((resp.code, framing, out))
}

/// Room for the backend's fields (at most 100) and the ones the relay adds.
const SLOTS: usize = 128;

fn values<'h>(headers: &'h [httparse::Header<'_>], name: &str) -> Vec<&'h [u8]> {
    headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value)
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, head)) = data.split_first() else {
        return;
    };
    let head_request = flags & 1 != 0;
    let close = flags & 2 != 0;
    let color = (flags & 4 == 0).then_some("green");
    let Some((code, framing, out)) = forwarded(head, head_request, color, close) else {
        return;
    };
    let shown = String::from_utf8_lossy(&out);

    assert!(
        out.ends_with(b"\r\n\r\n"),
        "no empty line at the end: {shown:?}"
    );
    let mut slots = [httparse::EMPTY_HEADER; SLOTS];
    let mut client = httparse::Response::new(&mut slots);
    match client.parse(&out) {
        Ok(httparse::Status::Complete(n)) => {
            assert_eq!(
                n,
                out.len(),
                "forwarded head has bytes after its end: {shown:?}"
            )
        }
        other => panic!("forwarded head does not parse ({other:?}): {shown:?}"),
    }
    assert_eq!(client.code, Some(code), "status changed: {shown:?}");
    assert_eq!(client.version, Some(1), "not HTTP/1.1: {shown:?}");
    let headers = &*client.headers;

    let lengths = values(headers, "content-length");
    let codings = values(headers, "transfer-encoding");
    match framing {
        Framing::Chunked => {
            assert_eq!(
                codings,
                [&b"chunked"[..]],
                "chunked body, other codings: {shown:?}"
            );
            assert!(lengths.is_empty(), "chunked body with a length: {shown:?}");
        }
        Framing::Length(n) => {
            assert!(
                codings.is_empty(),
                "length-framed body with a coding: {shown:?}"
            );
            assert_eq!(lengths.len(), 1, "not one Content-Length: {shown:?}");
            let text = std::str::from_utf8(lengths[0]).expect("digits");
            assert_eq!(
                text.trim().parse::<u64>().ok(),
                Some(n),
                "length changed: {shown:?}"
            );
        }
        Framing::Empty | Framing::Close => {
            assert!(
                codings.is_empty(),
                "a coding on a body not relayed chunked: {shown:?}"
            );
            assert!(lengths.len() <= 1, "several Content-Length: {shown:?}");
        }
    }
    if let Some(color) = color {
        assert_eq!(
            values(headers, "x-cutover-color"),
            [color.as_bytes()],
            "{shown:?}"
        );
    }
    let connection = values(headers, "connection");
    let want: &[&[u8]] = if close { &[b"close"] } else { &[] };
    assert_eq!(connection, want, "Connection not ours: {shown:?}");
    for name in ["keep-alive", "proxy-connection", "te", "trailer", "upgrade"] {
        assert!(
            values(headers, name).is_empty(),
            "hop-by-hop {name} forwarded: {shown:?}"
        );
    }
    assert_eq!(
        values(headers, "via").last(),
        Some(&&b"1.1 cutover"[..]),
        "{shown:?}"
    );

    // Fields the backend's Connection named are not forwarded (RFC 9110 §7.6.1).
    let mut slots = [httparse::EMPTY_HEADER; SLOTS];
    let mut backend = httparse::Response::new(&mut slots);
    let Ok(httparse::Status::Complete(_)) = backend.parse(head) else {
        panic!("the relay forwards a head httparse does not complete: {head:?}");
    };
    let named = connection_options(backend.headers);
    for name in named {
        let allowed = match name.as_str() {
            // Framing: kept on purpose, or checked above against the framing.
            "content-length" | "transfer-encoding" => continue,
            // Ours, added after the backend's are removed.
            "connection" => usize::from(close),
            "via" => 1,
            // Ours is added when the backend's is gone (RFC 9110 §6.6.1).
            "date" => 1,
            "x-cutover-color" if color.is_some() => 1,
            // Routing: never removed by a Connection option, on any message.
            "host" => continue,
            _ => 0,
        };
        assert!(
            values(headers, &name).len() <= allowed,
            "{name} was named in Connection but forwarded: {shown:?}"
        );
    }
});

/// The options of every Connection field, lowercase.
fn connection_options(headers: &[httparse::Header<'_>]) -> Vec<String> {
    headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("connection"))
        .flat_map(|h| h.value.split(|&b| b == b','))
        .map(|t| String::from_utf8_lossy(t.trim_ascii()).to_ascii_lowercase())
        // `close` is an option, not a field name (RFC 9110 §18.4 reserves `Close`).
        .filter(|t| !t.is_empty() && t != "close")
        .collect()
}
